"""DaxWindow bookkeeping against a recording map channel."""

import errno

import pytest

from fastvfs.dax import DaxWindow, MapChannel

M = 1 << 20


class RecordingChannel(MapChannel):
    def __init__(self):
        self.calls = []
        self.fail = False
        self.up = True

    @property
    def available(self):
        return self.up

    def map(self, fd, fd_offset, window_offset, length, writable):
        if self.fail:
            raise OSError(errno.EIO, "refused")
        self.calls.append(("map", fd, fd_offset, window_offset, length, writable))

    def unmap(self, window_offset, length):
        if self.fail:
            raise OSError(errno.EIO, "refused")
        self.calls.append(("unmap", window_offset, length))


def table(window):
    return [(m.start, m.length, m.key, m.file_offset, m.writable) for m in window.mappings()]


@pytest.fixture
def window():
    return DaxWindow(64 * M, RecordingChannel())


def test_setup_records_and_asks_the_channel(window):
    window.setup(7, 4 * M, 2 * M, 2 * M, True, key="a")
    assert window.channel.calls == [("map", 7, 4 * M, 2 * M, 2 * M, True)]
    assert table(window) == [(2 * M, 2 * M, "a", 4 * M, True)]
    assert window.lookup(3 * M).key == "a" and window.lookup(4 * M) is None


def test_overlapping_setup_replaces_and_trims_neighbours(window):
    window.setup(1, 0, 0, 8 * M, False, key="a")
    window.setup(2, 0, 2 * M, 2 * M, True, key="b")
    assert table(window) == [(0, 2 * M, "a", 0, False), (2 * M, 2 * M, "b", 0, True),
                             (4 * M, 4 * M, "a", 4 * M, False)]
    window.setup(3, 0, 0, 8 * M, False, key="c")
    assert table(window) == [(0, 8 * M, "c", 0, False)]


def test_partial_removal_splits(window):
    window.setup(1, 16 * M, 0, 8 * M, False, key="a")
    window.remove([(2 * M, 2 * M), (6 * M, 4 * M)])
    assert table(window) == [(0, 2 * M, "a", 16 * M, False), (4 * M, 2 * M, "a", 20 * M, False)]
    assert window.channel.calls[1:] == [("unmap", 2 * M, 2 * M), ("unmap", 6 * M, 4 * M)]


def test_removal_across_several_mappings(window):
    for i in range(4):
        window.setup(1, 0, i * 2 * M, 2 * M, False, key=i)
    window.remove([(M * 3, 4 * M)])
    assert [(s, n, k) for s, n, k, _, _ in table(window)] == [
        (0, 2 * M, 0), (2 * M, M, 1), (7 * M, M, 3)]


@pytest.mark.parametrize("offset,length", [(0, 0), (4096 + 1, 4096), (0, 4095),
                                           (64 * M, 4096), (60 * M, 8 * M),
                                           (4096, (1 << 64) - 4096)])
def test_ranges_outside_the_window_are_einval(window, offset, length):
    with pytest.raises(OSError) as exc:
        window.setup(1, 0, offset, length, False)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        window.remove([(offset, length)])
    assert exc.value.errno == errno.EINVAL
    assert window.channel.calls == []


def test_one_bad_range_removes_nothing(window):
    window.setup(1, 0, 0, 4 * M, False)
    with pytest.raises(OSError):
        window.remove([(0, 2 * M), (64 * M, 2 * M)])
    assert len(table(window)) == 1 and window.channel.calls[-1][0] == "map"


def test_file_offset_must_be_aligned_and_in_range(window):
    for file_offset in (100, (1 << 63) - 4096):
        with pytest.raises(OSError) as exc:
            window.setup(1, file_offset, 0, 2 * M, False)
        assert exc.value.errno == errno.EINVAL


def test_channel_failure_leaves_the_table_as_it_was(window):
    window.setup(1, 0, 0, 2 * M, False, key="a")
    window.channel.fail = True
    with pytest.raises(OSError):
        window.setup(2, 0, 0, 2 * M, False, key="b")
    assert table(window) == [(0, 2 * M, "a", 0, False)]


def test_unavailable_channel_is_enosys():
    window = DaxWindow(8 * M, RecordingChannel())
    window.channel.up = False
    with pytest.raises(OSError) as exc:
        window.setup(1, 0, 0, 2 * M, False)
    assert exc.value.errno == errno.ENOSYS
    assert not DaxWindow(8 * M).available


def test_clear_unmaps_everything_and_forget_does_not(window):
    window.setup(1, 0, 0, 2 * M, False)
    window.setup(1, 0, 4 * M, 2 * M, False)
    window.clear()
    assert table(window) == [] and window.channel.calls[-2:] == [
        ("unmap", 0, 2 * M), ("unmap", 4 * M, 2 * M)]
    window.setup(1, 0, 0, 2 * M, False)
    calls = len(window.channel.calls)
    window.forget()
    assert table(window) == [] and len(window.channel.calls) == calls


def test_window_size_must_be_aligned():
    with pytest.raises(ValueError):
        DaxWindow(4097)
    with pytest.raises(ValueError):
        DaxWindow(0)
