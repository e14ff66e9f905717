"""``--uid-map``/``--gid-map``: the Rust virtiofsd's syntax, as libvirt's session mode passes it."""

import pytest

from fastvfs import cli
from fastvfs.sandbox import IdMap


def test_libvirt_session_form():
    options = cli.parser().parse_args(["--socket-path", "s", "--uid-map=:0:1000:1:",
                                       "--uid-map=:1:100000:65536:", "--gid-map", ":0:1000:1:"])
    assert [(m.namespace, m.host, m.count) for m in options.uid_map] == [(0, 1000, 1),
                                                                         (1, 100000, 65536)]
    assert [(m.namespace, m.host, m.count) for m in options.gid_map] == [(0, 1000, 1)]


def test_any_delimiter():
    m = IdMap("/0/1000/1/")
    assert (m.namespace, m.host, m.count) == (0, 1000, 1)


@pytest.mark.parametrize("text", ["0:1000:1", ":0:1000:1", ":0:1000:", ":0:x:1:",
                                  ":0:1000:0:", ":-1:1000:1:", ":0:4294967295:2:", "",
                                  "00100010"])
def test_malformed_maps_are_refused(text, capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--socket-path", "s", f"--uid-map={text}"])
    assert "argument --uid-map: " in capsys.readouterr().err
