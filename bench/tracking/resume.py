"""A cell's checkpoints in a remote tracking store, where a cell moved to another node resumes from them: `share`
uploads the resumable last.pt and the best.pt beside it with their sha256 and step as tags; `fetch` downloads a
run's, checked against those digests and written in one rename; `newest` finds the cell's newest copy."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench import schema
from bench.storage import atomic_write, file_digest
from bench.tracking.store import TrackingError, _search


def share(run, path: Path, step: int = -1) -> None:
    """The resumable checkpoint into the tracking store (schema.RESUME_ARTIFACT), where another node finds it,
    with the best checkpoint beside it when there is one; then their sha256 and the step as tags (a download is
    checked against them; the newest copy of a cell's checkpoint wins)."""
    folder = str(Path(schema.RESUME_ARTIFACT).parent)
    tags = {schema.RESUME_STEP: str(step)}
    for file, tag in ((path, schema.RESUME_SHA256), (path.with_name("best.pt"), schema.RESUME_BEST_SHA256)):
        if Path(file).is_file():
            digest = file_digest(file)
            run._timed(run.client.log_artifact, run.run_id, str(file), folder)
            tags[tag] = digest
    run.set_tags(tags)


def fetch(run, local: Path, newer_than: int = -1) -> bool:
    """This run's checkpoint in the tracking store (schema.RESUME_ARTIFACT) written to `local`, and its best
    checkpoint beside it when there is one; False without one, or when it is not newer than step `newer_than`.
    Each download is checked against the sha256 logged with it, and replaces the local file in one rename:
    TrackingError when last.pt does not match (an upload cut short); a best.pt that does not match is left out."""
    folder = str(Path(schema.RESUME_ARTIFACT).parent)
    stored = {a.path for a in run.client.list_artifacts(run.run_id, folder)}
    if schema.RESUME_ARTIFACT not in stored:
        return False
    tags = run.client.get_run(run.run_id).data.tags
    step = int(tags.get(schema.RESUME_STEP, "-1") or -1)
    if newer_than >= 0 and step <= newer_than:
        return False
    pairs = [(schema.RESUME_ARTIFACT, local, schema.RESUME_SHA256)]
    if schema.RESUME_BEST_ARTIFACT in stored:
        pairs.append((schema.RESUME_BEST_ARTIFACT, local.with_name("best.pt"), schema.RESUME_BEST_SHA256))
    with tempfile.TemporaryDirectory() as tmp:
        for artifact, target, tag in pairs:
            path = Path(run.client.download_artifacts(run.run_id, artifact, tmp))
            want = tags.get(tag)
            if want and file_digest(path) != want:
                if artifact == schema.RESUME_BEST_ARTIFACT:
                    continue
                raise TrackingError(
                    f"run {run.run_id}'s {artifact} in the tracking store does not match the sha256 logged with "
                    "it (an upload cut short?): not used"
                )
            atomic_write(target, lambda t, src=path: shutil.copyfile(src, t))
    return True


def newest(tracker, cell_key: str, local: Path, newer_than: int = -1) -> str | None:
    """The newest resumable checkpoint of an unfinished run of this cell kept in the tracking store
    (schema.RESUME_ARTIFACT, with the best one beside it), downloaded to `local` when its step is above
    `newer_than` (the local checkpoint's); its run id, or None when there is none that new. TrackingError when
    the download does not match the digest recorded with it."""
    from bench.tracking.runs import Run

    query = f"attributes.status != 'FINISHED' and tags.`{schema.CELL}` = '{cell_key}'"
    for run in sorted(_search(tracker.client, [tracker.experiment_id], query), key=lambda r: -r.info.start_time):
        if fetch(Run(tracker.client, run.info.run_id, run.info.artifact_uri), local, newer_than):
            return run.info.run_id
    return None
