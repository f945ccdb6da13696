"""``dub``: the command-line client of the dubbing API.

    dub run episode.mp4 --to pt-BR                # upload, start, follow, download
    dub upload episode.mp4                         # -> job id
    dub start JOB --to pt-BR --to es
    dub follow JOB
    dub download JOB -o out.mp4 [--language pt-BR] [--version 2]
    dub script JOB --language pt-BR -o script.json [--source]
    dub redub JOB --language pt-BR --script script.json [--voice SPEAKER_00=kokoro:pf_dora]
    dub versions JOB --language pt-BR
    dub jobs | dub balance | dub voices --language pt-BR

The API and key come from ``--api`` / ``--key``, or ``DUB_API_URL`` / ``DUB_API_KEY``; with
neither, the embedded stack's (``http://127.0.0.1:8000`` and ``data/demo-api-key``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from stack.client import TERMINAL, ApiError, DubClient

DEFAULT_API = "http://127.0.0.1:8000"
DEMO_KEY = Path("data") / "demo-api-key"
CONTENT_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
                 ".mkv": "video/x-matroska", ".wav": "audio/wav", ".mp3": "audio/mpeg",
                 ".m4a": "audio/mp4", ".flac": "audio/flac"}


class Bar:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str) -> None:
        self.label, self._last = label, ""
        self._tty = sys.stderr.isatty()

    def show(self, fraction: float, note: str = "") -> None:
        pct = max(0, min(100, int(fraction * 100)))
        line = f"{self.label:<10} [{'#' * (pct * 30 // 100):<30}] {pct:3d}%  {note}"
        if line == self._last:
            return
        self._last = line
        if self._tty:
            sys.stderr.write("\r" + line.ljust(78))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


def _client(args: argparse.Namespace) -> DubClient:
    key = args.key or os.environ.get("DUB_API_KEY")
    if not key and DEMO_KEY.is_file():
        key = DEMO_KEY.read_text().strip()
    if not key:
        raise SystemExit("no API key: pass --key, set DUB_API_KEY, or start the embedded "
                         "stack (python -m stack), which writes data/demo-api-key")
    return DubClient(args.api or os.environ.get("DUB_API_URL") or DEFAULT_API, key)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def upload(api: DubClient, path: Path) -> str:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    content_type = CONTENT_TYPES.get(path.suffix.lower())
    if content_type is None:
        raise SystemExit(f"{path.name}: unknown media type (use one of "
                         f"{', '.join(CONTENT_TYPES)})")
    bar = Bar("upload")
    job_id = api.upload(path, content_type, lambda sent, size: bar.show(
        sent / size, f"{sent / 1e6:.1f}/{size / 1e6:.1f} MB"))
    bar.done()
    return job_id


def follow(api: DubClient, job_id: str) -> dict[str, Any]:
    bar = Bar("dubbing")

    def update(job: dict[str, Any]) -> None:
        running = [f"{lo['language']}:{lo['stage']}" for lo in job.get("languages", [])
                   if lo.get("stage")]
        stage = job.get("stage") or " ".join(running) or job["status"]
        eta = f"  eta {job['eta_seconds']} s" if job.get("eta_seconds") else ""
        bar.show((job.get("progress_percent") or 0) / 100, f"{stage}{eta}")

    job = api.wait(job_id, update, poll_s=1.0)
    bar.done()
    if job["status"] != "completed":
        err = job.get("error") or {}
        raise SystemExit(f"job {job_id} {job['status']}: {err.get('type', '')} "
                         f"{err.get('message', '')}".rstrip())
    return job


def _start_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"target_languages": args.to, "source_language": args.source,
                            "mixing_mode": args.mixing_mode, "lipsync": args.lipsync,
                            "pause_for_review": args.review}
    if args.notes:
        opts["notes"] = args.notes
    if args.voice:
        opts["speakers"] = _voices(args.voice)
    return opts


def _voices(pairs: list[str]) -> list[dict[str, str]]:
    out = []
    for pair in pairs:
        speaker, _, voice = pair.partition("=")
        if not voice:
            raise SystemExit(f"--voice {pair!r}: expected SPEAKER=VOICE_KEY")
        out.append({"speaker_id": speaker, "voice_key": voice})
    return out


def cmd_run(args: argparse.Namespace) -> None:
    with _client(args) as api:
        job_id = upload(api, args.file)
        started = api.start(job_id, **_start_options(args))
        print(f"job {job_id} started ({started['cost_minutes']} min; balance "
              f"{started['balance_minutes']} min)", file=sys.stderr)
        if started.get("temporal_ui_url"):
            print(f"Temporal Web UI: {started['temporal_ui_url']}", file=sys.stderr)
        job = follow(api, job_id)
        for lang in job["target_languages"]:
            out = _output(args.output, args.file, lang, len(job["target_languages"]))
            api.download(job_id, out, lang)
            print(out)


def _output(given: Path | None, source: Path, lang: str, count: int) -> Path:
    if given is not None and count == 1:
        return given
    base = given or source.parent
    if given is not None:
        base = given if given.is_dir() or not given.suffix else given.parent
    return base / f"{source.stem}.{lang}.mp4"


def cmd_upload(args: argparse.Namespace) -> None:
    with _client(args) as api:
        print(upload(api, args.file))


def cmd_start(args: argparse.Namespace) -> None:
    with _client(args) as api:
        _print(api.start(args.job, **_start_options(args)))


def cmd_follow(args: argparse.Namespace) -> None:
    with _client(args) as api:
        _print(follow(api, args.job))


def cmd_status(args: argparse.Namespace) -> None:
    with _client(args) as api:
        _print(api.status(args.job))


def cmd_download(args: argparse.Namespace) -> None:
    with _client(args) as api:
        out = args.output or Path(f"{args.job}.{args.language or 'dub'}.mp4")
        print(api.download(args.job, out, args.language, args.version))


def cmd_script(args: argparse.Namespace) -> None:
    with _client(args) as api:
        got = api.script(args.job, args.language, "source" if args.source else "target",
                         args.version)
        text = json.dumps(got["segments"], indent=2, ensure_ascii=False)
        if args.output:
            args.output.write_text(text + "\n")
            print(f"version {got['version']}, {len(got['segments'])} segments -> "
                  f"{args.output}", file=sys.stderr)
        else:
            print(text)


def cmd_redub(args: argparse.Namespace) -> None:
    edit: dict[str, Any] = {}
    if args.script:
        segments = json.loads(args.script.read_text())
        edit["segments"] = segments["segments"] if isinstance(segments, dict) else segments
    if args.voice:
        edit["speakers"] = _voices(args.voice)
    if args.mixing_mode:
        edit["mixing_mode"] = args.mixing_mode
    if args.note:
        edit["note"] = args.note
    with _client(args) as api:
        if args.dry_run:
            _print(api.validate_revision(args.job, args.language, **edit))
            return
        v = api.revise(args.job, args.language, **edit)
        bar, t0 = Bar(f"v{v['version']}"), time.monotonic()
        while v["status"] not in TERMINAL:
            bar.show(0.5 if v.get("stage") else 0.1, v.get("stage") or v["status"])
            time.sleep(0.5)
            v = next(x for x in api.versions(args.job, args.language)["versions"]
                     if x["version"] == v["version"])
        bar.show(1.0, f"{v['status']} in {time.monotonic() - t0:.1f} s")
        bar.done()
        if v["status"] != "completed":
            err = v.get("error") or {}
            raise SystemExit(f"version {v['version']} {v['status']}: "
                             f"{err.get('message', '')}")
        out = args.output or Path(f"{args.job}.{args.language}.v{v['version']}.mp4")
        print(api.download(args.job, out, args.language, v["version"]))


def cmd_versions(args: argparse.Namespace) -> None:
    with _client(args) as api:
        _print(api.versions(args.job, args.language))


def cmd_jobs(args: argparse.Namespace) -> None:
    with _client(args) as api:
        _print(api._check(api._http.get("/v1/jobs", params={"limit": args.limit})))


def cmd_balance(args: argparse.Namespace) -> None:
    with _client(args) as api:
        _print(api._check(api._http.get("/v1/balance")))


def cmd_voices(args: argparse.Namespace) -> None:
    with _client(args) as api:
        params = {"language": args.language} if args.language else {}
        _print(api._check(api._http.get("/v1/voices", params=params)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dub", description="Dub videos with the OpenDub API.")
    p.add_argument("--api", help=f"API base URL (DUB_API_URL; default {DEFAULT_API})")
    p.add_argument("--key", help="API key (DUB_API_KEY; default data/demo-api-key)")
    sub = p.add_subparsers(dest="command", required=True)

    def start_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--to", action="append", required=True, metavar="LANG",
                        help="target language (repeat for several)")
        sp.add_argument("--from", dest="source", default="auto", metavar="LANG",
                        help="source language (default: auto)")
        sp.add_argument("--mixing-mode", default="voiceover_without_original_voice",
                        choices=["voiceover_only", "voiceover_with_original_track",
                                 "voiceover_without_original_voice"])
        sp.add_argument("--lipsync", action="store_true")
        sp.add_argument("--review", action="store_true",
                        help="pause after translation until approved")
        sp.add_argument("--voice", action="append", metavar="SPEAKER=VOICE")
        sp.add_argument("--notes", default="")

    sp = sub.add_parser("run", help="upload, start, follow and download")
    sp.add_argument("file", type=Path)
    sp.add_argument("-o", "--output", type=Path)
    start_flags(sp)
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("upload", help="upload a file; prints the job id")
    sp.add_argument("file", type=Path)
    sp.set_defaults(fn=cmd_upload)
    sp = sub.add_parser("start", help="start an uploaded job")
    sp.add_argument("job")
    start_flags(sp)
    sp.set_defaults(fn=cmd_start)
    for name, fn in (("follow", cmd_follow), ("status", cmd_status)):
        sp = sub.add_parser(name, help=f"{name} a job")
        sp.add_argument("job")
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("download", help="download a dub")
    sp.add_argument("job")
    sp.add_argument("-o", "--output", type=Path)
    sp.add_argument("--language")
    sp.add_argument("--version", type=int)
    sp.set_defaults(fn=cmd_download)
    sp = sub.add_parser("script", help="read a script as segments (JSON)")
    sp.add_argument("job")
    sp.add_argument("--language", required=True)
    sp.add_argument("--source", action="store_true", help="the source transcript")
    sp.add_argument("--version", type=int)
    sp.add_argument("-o", "--output", type=Path)
    sp.set_defaults(fn=cmd_script)
    sp = sub.add_parser("redub", help="submit an edited script/voices: the next version")
    sp.add_argument("job")
    sp.add_argument("--language", required=True)
    sp.add_argument("--script", type=Path, help="edited segments (from dub script)")
    sp.add_argument("--voice", action="append", metavar="SPEAKER=VOICE")
    sp.add_argument("--mixing-mode")
    sp.add_argument("--note", default="")
    sp.add_argument("--dry-run", action="store_true", help="only validate the edit")
    sp.add_argument("-o", "--output", type=Path)
    sp.set_defaults(fn=cmd_redub)
    sp = sub.add_parser("versions", help="a language's versions")
    sp.add_argument("job")
    sp.add_argument("--language", required=True)
    sp.set_defaults(fn=cmd_versions)
    sp = sub.add_parser("jobs", help="list jobs")
    sp.add_argument("--limit", type=int, default=20)
    sp.set_defaults(fn=cmd_jobs)
    sp = sub.add_parser("balance", help="minutes left")
    sp.set_defaults(fn=cmd_balance)
    sp = sub.add_parser("voices", help="voices per language")
    sp.add_argument("--language")
    sp.set_defaults(fn=cmd_voices)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except ApiError as e:
        raise SystemExit(f"error: {e.status} {e.body.get('error')}: "
                         f"{e.body.get('message')}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
