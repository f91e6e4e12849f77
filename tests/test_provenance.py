"""alad/provenance.py: the commit and machine every result records."""

from alad.provenance import git_commit, machine


def test_git_commit_inside_the_checkout_is_a_full_hash():
    commit = git_commit()
    assert len(commit) == 40 and int(commit, 16) >= 0


def test_a_copy_without_git_reports_the_commit_it_was_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no repository above /tmp
    monkeypatch.delenv("ALAD_GIT_COMMIT", raising=False)
    assert git_commit() == "unknown"
    monkeypatch.setenv("ALAD_GIT_COMMIT", "0123abc")
    assert git_commit() == "0123abc"


def test_machine_names_the_device_and_the_load():
    info = machine("cpu", load_start=1.234)
    assert info["device"] == "cpu" and "gpu" not in info
    assert info["load1_start"] == 1.23 and info["load1_end"] >= 0 and info["cpus"] >= 1
