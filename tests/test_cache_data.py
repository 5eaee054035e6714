"""The stage cache and the data behind path parameters, through the real CLI.

Our notebook's parameters cell reads its data directory and a labels file from the
environment (`DATA_DIR = os.environ.get(...)`), as notebooks moved to a server
with the data mounted at `/mnt/data` do.  `load` reads every `*.txt` under the
directory (`Path(DATA_DIR).glob`), `fit` sums what `load` found (metric `total`),
`labels` reads the single file (`open(LABELS)`), `other` names neither (it reads
a file by an absolute literal in its code).  The
data lives outside the notebook's directory (an absolute path: no FILES entry
covers it), so only its content in the key keeps a changed file from being a
cache hit.  The runs build on each other in one fixture, in order; mtimes are
set explicitly (`os.utime`) where a change must not be seen by size or mtime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nb2prod import artifacts, cache
from nb2prod.pipeline import load_pipeline
from nb2prod.runtime import contents
from nb2prod.runtime.cache import data_digests, plan_key
from tests.test_cache import Run, write_notebook
from tests.test_cache_params import LabelledRuns
from tests.test_run_e2e import nb2prod

CELLS = [
    (["imports"], "import os\nfrom pathlib import Path"),
    (["parameters"], ('DATA_DIR = os.environ.get("CACHE_TEST_DATA_DIR", "data")\n'
                      'LABELS = os.environ.get("CACHE_TEST_LABELS", "labels.txt")')),
    (["stage:load"], ("values = sorted(int(line) for path in sorted(Path(DATA_DIR).glob('*.txt'))\n"
                      "                for line in path.read_text().split())")),
    (["stage:fit"], "doubled = [2 * v for v in values]"),
    (["metrics"], "total = sum(doubled)"),
    (["stage:labels"], "with open(LABELS) as fh:\n    names = fh.read().split()"),
    (["stage:other"], 'with open("NOTES") as fh:\n    constant = len(fh.read())'),
]
PAST = 1_600_000_000_000_000_000  # a fixed mtime (ns), far from any write of this test


@dataclass
class Session(LabelledRuns):
    work: Path
    data: Path
    labels: Path
    memo: Path
    runs: dict[str, Run] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        return {"CACHE_TEST_DATA_DIR": str(self.data), "CACHE_TEST_LABELS": str(self.labels),
                "NB2PROD_DIGEST_MEMO": str(self.memo / "file-digests.json")}

    def run(self, label: str, *args: str) -> Run:
        return self.run_labelled(label, *args, **self.environ)


def rewrite(path: Path, text: str) -> None:
    """New content of the same size, with the mtime it had: only ctime (and bytes) tell."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    work = tmp_path_factory.mktemp("cache-data")
    mounted = tmp_path_factory.mktemp("mnt")  # "/mnt": not the notebook's directory
    notes = mounted / "notes.txt"  # named by a literal in `other`'s code
    notes.write_text("hello\n")
    write_notebook(work / "p.ipynb", [(t, src.replace("NOTES", str(notes))) for t, src in CELLS])
    data = mounted / "data"
    (data / "more").mkdir(parents=True)
    (data / "a.txt").write_text("1\n2\n")
    (data / "more" / "b.txt").write_text("3\n")  # not read (no recursive glob), still keyed
    labels = mounted / "labels.txt"
    labels.write_text("red white\n")
    for path in (data / "a.txt", data / "more" / "b.txt", labels):
        os.utime(path, ns=(PAST, PAST))
    done = nb2prod("split", "p.ipynb", "-o", "p", cwd=work)
    assert done.returncode == 0, done.stderr
    s = Session(work, data, labels, tmp_path_factory.mktemp("xdg-cache"))
    s.run("first")
    s.run("same")
    rewrite(data / "a.txt", "2\n1\n")  # load re-runs; its output is the same
    s.run("reordered")
    rewrite(data / "a.txt", "5\n1\n")  # load's output changes: fit re-runs
    s.run("changed")
    (data / "c.txt").write_text("4\n")
    s.run("added")
    rewrite(labels, "red rose\n ")
    s.run("labels-changed")
    (data / "more" / "loop").symlink_to("loop")  # unreadable: ELOOP, also for root
    s.run("unreadable")
    (data / "more" / "loop").unlink()
    s.run("readable-again")
    notes.write_text("hello!\n")
    s.run("notes-changed")
    return s


def test_unchanged_data_is_a_hit(session: Session) -> None:
    first, same = session.runs["first"], session.runs["same"]
    assert first.states() == {"load": "done", "fit": "done", "labels": "done", "other": "done"}
    assert same.cached_from() == {s: first.run_id for s in ("load", "fit", "labels", "other")}
    assert first.record["metrics"] == same.record["metrics"] == {"fit": {"total": 6}}
    assert "not cached" not in first.stdout + same.stdout


def test_a_changed_data_file_reruns_the_reading_stage_and_what_its_output_changes(
        session: Session) -> None:
    first = session.runs["first"].run_id
    reordered, changed = session.runs["reordered"], session.runs["changed"]
    # Same size, same mtime: the bytes differ, load runs; its sorted output did not change.
    assert reordered.cached_from() == {"load": None, "fit": first, "labels": first,
                                       "other": first}
    assert reordered.record["metrics"] == {"fit": {"total": 6}}
    assert changed.cached_from() == {"load": None, "fit": None, "labels": first,
                                     "other": first}
    assert changed.record["metrics"] == {"fit": {"total": 12}}  # what a full run computes


def test_a_file_added_to_the_directory_is_a_miss(session: Session) -> None:
    first, added = session.runs["first"].run_id, session.runs["added"]
    assert added.cached_from() == {"load": None, "fit": None, "labels": first, "other": first}
    assert added.record["metrics"] == {"fit": {"total": 20}}
    assert session.runs["labels-changed"].cached_from() == {
        "load": added.run_id, "fit": added.run_id, "labels": None, "other": first}


def test_an_unreadable_entry_means_not_cached_with_the_reason(session: Session) -> None:
    unreadable, again = session.runs["unreadable"], session.runs["readable-again"]
    loop = session.data / "more" / "loop"
    why = (f"nb2prod: not cached, always run: load: parameter DATA_DIR names {session.data}: "
           f"{loop} cannot be read (Too many levels of symbolic links)")
    assert why in unreadable.stdout.splitlines(), unreadable.stdout
    assert unreadable.stdout.count("not cached") == 1
    added, labelled = (session.runs[k].run_id for k in ("added", "labels-changed"))
    # load runs (its data unknown), its output the same as before: fit is a hit.
    assert unreadable.cached_from() == {"load": None, "fit": added, "labels": labelled,
                                        "other": session.runs["first"].run_id}
    # Readable again, the same data as before the link: the earlier run's key is a hit.
    assert again.cached_from()["load"] == session.runs["added"].run_id
    assert "not cached" not in again.stdout


def test_a_file_read_by_an_absolute_literal_is_keyed_by_its_content(session: Session) -> None:
    again, notes = session.runs["readable-again"], session.runs["notes-changed"]
    assert again.cached_from()["other"] == session.runs["first"].run_id
    assert notes.cached_from() == {s: again.cached_from()[s] or again.run_id
                                   for s in ("load", "fit", "labels")} | {"other": None}


def test_the_digests_are_memoised_per_user(session: Session) -> None:
    memo = json.loads((session.memo / "file-digests.json").read_text())
    files = memo["files"]
    assert str(session.data / "more" / "b.txt") in files  # old mtime, hashed long ago
    assert all(len(entry) == 6 for entry in files.values())


def test_the_memo_file_is_named_by_NB2PROD_DIGEST_MEMO_else_under_XDG_CACHE_HOME(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite keeps its memo out of the user's ~/.cache without moving XDG_CACHE_HOME
    (matplotlib's font cache lives there); a user who sets neither gets ~/.cache."""
    home = Path(os.path.expanduser("~")).resolve()
    assert not Path(os.environ["NB2PROD_DIGEST_MEMO"]).resolve().is_relative_to(home / ".cache")
    monkeypatch.setenv("NB2PROD_DIGEST_MEMO", str(tmp_path / "mine.json"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert contents.shared_memo().path == tmp_path / "mine.json"
    monkeypatch.delenv("NB2PROD_DIGEST_MEMO")
    assert contents.shared_memo().path == tmp_path / "xdg" / "nb2prod" / "file-digests.json"


# -- the key's code, shared by the runner and the pod -----------------------------------------
def test_the_runtime_key_of_the_shipped_plan_is_the_local_key(
        session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan as an in-cluster stage gets it (JSON), keyed by the runtime alone with the
    pod's environment, gives the key `nb2prod run` computes here for the same data; the
    data enters it (another directory, another key)."""
    monkeypatch.setenv("NB2PROD_DIGEST_MEMO", str(tmp_path / "xdg" / "file-digests.json"))
    pipeline = load_pipeline(session.pipeline_dir)
    load = pipeline.stages["load"]
    run_id = session.runs["readable-again"].run_id
    plan = json.loads(json.dumps(cache.cache_plan(pipeline, load, {}), default=repr))
    assert plan["data"]["names"] == ["DATA_DIR"]
    local = cache.key_for(session.store, pipeline, load, {}, run_id, environ=session.environ)
    assert local is not None
    assert plan_key(session.store, "p", run_id, plan, session.environ) == local
    indexed = artifacts.read_json(session.store, f"p/cache/load/{local}.json")
    assert indexed["run_id"] == session.runs["added"].run_id  # what `run` indexed
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_text("1\n")
    assert plan_key(session.store, "p", run_id, plan,
                    {**session.environ, "CACHE_TEST_DATA_DIR": str(elsewhere)}) != local
    # An override names the data now (papermill injects it after the cell).
    plan = json.loads(json.dumps(cache.cache_plan(pipeline, load, {"DATA_DIR": str(elsewhere)})))
    data, reason = data_digests(plan["data"], session.environ)
    assert reason is None and data["DATA_DIR"][0]["path"] == str(elsewhere)


def test_deploy_does_not_cache_a_stage_whose_data_is_on_the_pods_file_system(
        session: Session) -> None:
    pipeline = load_pipeline(session.pipeline_dir)
    params = {"DATA_DIR": "/mnt/data"}
    assert cache.key_for(session.store, pipeline, pipeline.stages["load"], params,
                         session.runs["first"].run_id, environ={}, here=False) is None
    pods = "on the pods' file system (the deploying machine cannot hash it)"
    notes = session.data.parent / "notes.txt"
    assert cache.uncacheable(pipeline, pipeline.batch, params, "deploy") == [
        f"not cached, always run: load: parameter DATA_DIR names /mnt/data, {pods}",
        f"not cached, always run: other: its code reads {notes}, {pods}"]
    assert cache.uncacheable(pipeline, pipeline.batch, params, "pod") == []


# -- content digests (pure file system, no runs) ----------------------------------------------
def test_a_tree_digest_follows_links_safely(tmp_path: Path) -> None:
    memo = contents.DigestMemo(tmp_path / "memo.json")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.csv").write_text("a,b\n")
    base = contents.describe_path(str(tree), memo)
    assert base["kind"] == "dir"
    (tree / "sub" / "up").symlink_to(tree)  # a link back up: marked, not walked forever
    (tree / "gone").symlink_to(tmp_path / "nowhere")  # dangling: marked
    os.mkfifo(tree / "pipe")  # never opened (it would block)
    linked = contents.describe_path(str(tree), memo)
    assert linked["sha256"] != base["sha256"] and linked["entries"] == 5
    (tmp_path / "nowhere").write_text("now here")
    appeared = contents.describe_path(str(tree), memo)
    assert appeared["sha256"] != linked["sha256"]
    target = tmp_path / "elsewhere.csv"
    target.write_text("a,b\n")
    (tree / "sub" / "x.csv").unlink()
    (tree / "sub" / "x.csv").symlink_to(target)  # the same bytes through a link: the same
    assert contents.describe_path(str(tree), memo) == appeared
    assert contents.describe_path(str(tmp_path / "none"), memo) == {"kind": "missing"}
    (tree / "kernel").symlink_to("/proc/self")  # never walked: its files may block
    with pytest.raises(contents.Unreadable, match="is on a kernel file system"):
        contents.describe_path(str(tree), memo)
    (tree / "kernel").unlink()
    assert contents.describe_path(str(target), memo)["kind"] == "file"


def test_the_memo_reads_a_file_again_only_when_its_stat_changed(tmp_path: Path) -> None:
    path, memo_file = tmp_path / "data.csv", tmp_path / "memo.json"
    path.write_text("1,2\n")
    os.utime(path, ns=(PAST, PAST))
    later = contents.RACY_NS * 10

    def memo() -> contents.DigestMemo:  # a new process, its clock well past the write
        return contents.DigestMemo(memo_file, clock=lambda: os.stat(path).st_ctime_ns + later)

    first = memo()
    digest = first.digest(str(path), path.stat())
    first.save()
    again = memo()
    assert again.digest(str(path), path.stat()) == digest and again.hashed == 0
    path.write_text("3,4\n")  # same size; an explicit other mtime
    os.utime(path, ns=(PAST, PAST + 1))
    changed = memo()
    assert changed.digest(str(path), path.stat()) != digest and changed.hashed == 1


def test_a_file_hashed_right_after_its_write_is_not_memoised(tmp_path: Path) -> None:
    """Racily clean (git's word): a second write in the same timestamp tick would keep the
    stat, so a digest taken within RACY_NS of the file's ctime is not kept."""
    path, memo_file = tmp_path / "data.csv", tmp_path / "memo.json"
    path.write_text("1,2\n")
    now = os.stat(path).st_ctime_ns
    first = contents.DigestMemo(memo_file, clock=lambda: now)
    first.digest(str(path), path.stat())
    first.save()
    again = contents.DigestMemo(memo_file, clock=lambda: now)
    again.digest(str(path), path.stat())
    assert again.hashed == 1


def test_every_style_of_path_parameter_is_keyed_by_its_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Env-derived, a literal absolute default, `Path(...) /`, `os.path.join`, f-strings,
    a list of paths, `~` and a glob pattern: each names data whose change changes the key's data part;
    a relative path is left to FILES (the stage's working directory holds only those)."""
    monkeypatch.setenv("NB2PROD_DIGEST_MEMO", str(tmp_path / "xdg" / "file-digests.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    data.mkdir(parents=True)
    (data / "wine.csv").write_text("a,b\n1,2\n")
    cell = (f'LITERAL = "{data}"\n'
            'DATA_DIR = os.environ.get("WINE_DIR", "data")\n'
            'JOINED = os.path.join(DATA_DIR, "wine.csv")\n'
            'PATH = Path(DATA_DIR) / "wine.csv"\n'
            'SHOWN = f"{DATA_DIR}/wine.csv"\n'
            f'BOTH = ["{data}/wine.csv", "relative.csv"]\n'
            'HOMED = "~/data/wine.csv"\n'
            'PATTERN = os.path.join(DATA_DIR, "*.csv")\n'
            "STAMP = datetime.now()\n")  # used by no stage here: no harm
    names = ["BOTH", "DATA_DIR", "HOMED", "JOINED", "LITERAL", "PATH", "PATTERN", "SHOWN"]
    spec = {"cell": cell, "names": names, "overrides": {}}
    environ = {"WINE_DIR": str(data)}
    before, reason = data_digests(spec, environ)
    assert reason is None and sorted(before) == names
    assert before["DATA_DIR"] == [{"path": str(data), **contents.describe_path(
        str(data), contents.shared_memo())}]
    assert [e["path"] for e in before["BOTH"]] == [f"{data}/wine.csv"]  # relative: FILES'
    assert data_digests(spec, {})[0].keys() == {"BOTH", "HOMED", "LITERAL"}  # default "data"
    (data / "wine.csv").write_text("a,b\n1,3\n")
    after = data_digests(spec, environ)[0]
    assert all(after[n] != before[n] for n in names)
    assert after["PATTERN"][0]["kind"] == "glob"
    (data / "red.csv").write_text("c\n")  # a new match of the pattern
    assert data_digests(spec, environ)[0]["PATTERN"] != after["PATTERN"]
    stamped = {**spec, "names": ["STAMP"]}
    assert data_digests(stamped, environ) == (
        {}, "parameter STAMP is known only when its cell runs")


def test_a_pod_that_cannot_read_its_data_runs_the_stage_and_logs_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """In-cluster (`run-stage` with a cache plan): the pod hashes its own files; data it
    cannot read means no key (the stage runs) and one line in the pod's log."""
    from nb2prod.runtime.cache import cached_stage
    from nb2prod.runtime.stores import FileStore

    monkeypatch.setenv("NB2PROD_DIGEST_MEMO", str(tmp_path / "xdg" / "file-digests.json"))
    data = tmp_path / "mnt"
    data.mkdir()
    (data / "loop").symlink_to("loop")
    plan = {"schema": 1, "loads": {}, "file_producers": [], "env": ["POD_DATA"],
            "parts": {"code": {}, "params": {}, "files": {}, "requirements": ""},
            "data": {"cell": 'DATA = os.environ.get("POD_DATA", "data")', "names": ["DATA"],
                     "overrides": {}}}
    store = FileStore(tmp_path / "store")
    monkeypatch.setenv("POD_DATA", str(data))
    assert cached_stage(store, "p", "load", "r2", "r2", plan) == (None, None)
    assert capsys.readouterr().err == (
        f"nb2prod: not cached, always run: load: parameter DATA names {data}: {data / 'loop'} "
        "cannot be read (Too many levels of symbolic links)\n")
    (data / "loop").unlink()
    key, hit = cached_stage(store, "p", "load", "r2", "r2", plan)
    assert key is not None and hit is None and capsys.readouterr().err == ""
