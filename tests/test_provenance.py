"""The git sha in a run folder is the toolkit's own, and only when the toolkit runs from its own checkout."""
import subprocess

from lagrangian_lens.provenance import git_state


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_a_toolkit_installed_inside_a_users_repository_records_no_sha(tmp_path):
    user = tmp_path / "user-project"
    installed = user / ".venv" / "lib" / "site-packages" / "lagrangian_lens" / "provenance.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("# installed copy\n")
    (user / "analysis.py").write_text("print('mine')\n")
    _git(user, "init", "-q")
    _git(user, "add", "analysis.py")
    _git(user, "commit", "-qm", "the user's work")
    assert git_state(installed) == {"sha": None, "dirty": None}


def test_the_toolkits_own_checkout_records_its_sha(tmp_path):
    repo = tmp_path / "lagrangian-lens"
    module = repo / "src" / "lagrangian_lens" / "provenance.py"
    module.parent.mkdir(parents=True)
    module.write_text("# the toolkit\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "toolkit")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_state(module) == {"sha": sha, "dirty": False}
    module.write_text("# edited\n")
    assert git_state(module) == {"sha": sha, "dirty": True}
