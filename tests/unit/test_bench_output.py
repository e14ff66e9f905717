"""Every benchmark records the commit it measured (``bench.output.git_commit``): HEAD's short
hash, marked ``+dirty`` when tracked files differ from it, ``unknown`` outside a checkout."""

import subprocess

from bench import output


def _git(repo, *argv):
    return subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_commit_clean_dirty_and_outside_a_checkout(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f").write_text("a")
    _git(repo, "add", "f")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "--short", "HEAD")
    monkeypatch.setattr(output, "REPO", repo)
    assert output.git_commit() == head
    (repo / "untracked").write_text("x")            # not part of what is measured
    assert output.git_commit() == head
    (repo / "f").write_text("b")
    assert output.git_commit() == head + "+dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setattr(output, "REPO", outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert output.git_commit() == "unknown"
