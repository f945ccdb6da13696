"""Benchmark: the whole job through the REST API and Temporal (the embedded stack, as
`scripts/demo` runs it) against the anchor, a plain in-process chain of the same engines
(faster-whisper base -> Bergamot -> Kokoro -> time-stretch -> mux, no separation, no
diarization, no retries, nothing stored); the first job after the stack starts against warm
ones; each stage's time and share; each worker's peak memory. Prints Markdown tables of
medians of interleaved runs (anchor, job, anchor, job, ...), so a noisy neighbour weighs on
both alike.

    .venv/bin/python -m bench.job [--runs 3] [--sample samples/two_speakers_en.mp4]
                                  [--clip-minutes 10]   # also a long clip of the same kind
                                  [--long-minutes 60]   # one job on an hour: wall time,
                                                        # peak RSS per worker, history size
                                  [--upload-gb 2]       # upload speed and the API's RSS
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml

from stack.client import DubClient
from stack.devserver import free_port

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"
TARGET = "pt-BR"
STAGE_ORDER = ["probe", "separate", "diarize", "transcribe", "translate", "synthesize",
               "lipsync", "mix"]


# ---- the anchor: a plain script of the same engines ------------------------------------

class Anchor:
    """What a user would write in an afternoon: transcribe, translate each segment, speak
    it at the natural rate, squeeze what is too long (time-stretch, at most 1.25x), lay it
    on a silent track, mux it over the source video. Models load once (not counted).

    Kokoro runs as its package ships it (the int8 model), as a plain script would;
    ``float_vocoder`` gives it the service's rewrite of the vocoder too (a second anchor,
    so that the engine's own speed-up is told apart from the rest of the service's)."""

    def __init__(self, models: Path, float_vocoder: bool = False) -> None:
        from engines.synthesize import KokoroEngine
        from engines.transcribe import FasterWhisperTranscriber, assemble_whisper_base
        from engines.translate import BergamotTranslator

        self.whisper = FasterWhisperTranscriber(assemble_whisper_base(models / "whisper-base"))
        self.translator = BergamotTranslator()
        self.kokoro = KokoroEngine(models / "kokoro", float_vocoder=float_vocoder)

    def run(self, source: Path, out: Path) -> float:
        from engines.media import time_stretch

        t0 = time.perf_counter()
        speech = _decode(source, 16_000, "mono")[0]
        segments, _ = self.whisper._model.transcribe(speech, language="en", vad_filter=True,
                                                     beam_size=5)
        segments = list(segments)
        texts = self.translator.translate([s.text.strip() for s in segments], "en", "pt")
        rate = self.kokoro.sample_rate_hz
        track = np.zeros(int(speech.size / 16_000 * rate) + rate, dtype=np.float32)
        for i, (seg, text) in enumerate(zip(segments, texts, strict=True)):
            clip = self.kokoro.synthesize(text, "pt-BR", "kokoro:jm_kumo" if i % 2 == 0
                                          else "kokoro:jf_nezumi", 1.0)
            window = max(0.2, seg.end - seg.start)
            if clip.size / rate > window:
                clip = time_stretch(clip, rate, min(1.25, clip.size / rate / window))
            a = int(seg.start * rate)
            track[a:a + clip.size] += clip[: max(0, track.size - a)]
        _mux(source, track, rate, out)
        return time.perf_counter() - t0


class CpuMeter:
    """How busy the machine's cores were between ``start`` and ``stop`` (/proc/stat): the
    share of all cores' time not idle, whoever used it."""

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def __enter__(self) -> CpuMeter:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        total, idle = self._read()
        spent = total - self._start[0]
        self.busy = 1 - (idle - self._start[1]) / spent if spent else 0.0


def _decode(path: Path, rate: int, layout: str) -> np.ndarray:
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        frames = [f.to_ndarray() for fr in c.decode(c.streams.audio[0])
                  for f in resampler.resample(fr)]
    return np.concatenate(frames, axis=1).astype(np.float32)


def _mux(source: Path, track: np.ndarray, rate: int, out: Path) -> None:
    """The source's video stream copied, the dub encoded as AAC."""
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("aac", rate=rate, layout="mono")
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.clip(track, -1, 1)[None, :], format="fltp",
                                           layout="mono")
        frame.sample_rate = rate
        for chunk in _frames(frame, aout):
            dst.mux(chunk)
        dst.mux(aout.encode(None))


def _frames(frame: av.AudioFrame, stream: Any) -> list[Any]:
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=stream.rate,
                                  frame_size=1024)
    packets = []
    for f in resampler.resample(frame) + resampler.resample(None):
        packets += stream.encode(f)
    return packets


# ---- the full job through the embedded stack ---------------------------------------------

@dataclass
class Stack:
    root: Path
    proc: subprocess.Popen[bytes]
    api_url: str
    api_key: str
    started_s: float
    temporal_port: int

    def workers(self) -> dict[str, int]:
        """Name -> pid of the stack's worker processes (the lip-sync one runs in the
        cpu-lipsync environment's interpreter)."""
        found = {}
        for pid in _children(self.proc.pid):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"worker" in cmd:
                found["worker-lipsync" if b"cpu-lipsync" in cmd[0] else "worker"] = pid
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def reset_peak_rss(pids: list[int]) -> None:
    """Start each process's peak RSS (VmHWM) afresh, so the next reading is of what comes
    next (Linux: writing 5 to clear_refs)."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_stack(root: Path) -> Stack:
    """`python -m stack --no-demo` on free ports, its data in ``root``; returns when the
    API answers (the workers have loaded and warmed their models by then or soon after)."""
    cfg = yaml.safe_load((ROOT / "temporal-dev.yml").read_text())
    cfg.update(port=free_port(), ui_port=free_port())
    (root / "temporal.yml").write_text(yaml.safe_dump(cfg))
    api_port = free_port()
    env = {**os.environ, "DUB_DATA_DIR": str(root / "data"), "DUB_API_PORT": str(api_port),
           "DUB_PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
           "DUB_WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}"}
    started = time.monotonic()
    log = (root / "stack.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "stack", "--no-demo", "--temporal-config",
                             str(root / "temporal.yml")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    key_file = root / "data" / "demo-api-key"
    url = f"http://127.0.0.1:{api_port}"
    import httpx

    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the stack exited: see {root / 'stack.log'}")
        try:
            if key_file.exists() and httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return Stack(root, proc, url, key_file.read_text().strip(), started, cfg["port"])


def wait_warm(stack: Stack, timeout_s: float = 600) -> float:
    """Until every worker logged that its models are loaded and warm (it polls then)."""
    logs = stack.root / "data" / "logs"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        texts = [p.read_text(errors="replace") for p in logs.glob("worker*.log")]
        if texts and all("worker serving" in t for t in texts):
            return time.monotonic() - stack.started_s
        time.sleep(0.5)
    raise SystemExit(f"the workers did not start within {timeout_s:.0f} s: see {logs}")


def run_job(stack: Stack, source: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Upload, start, follow, download: the wall time a client sees, and stage times."""
    t0 = time.perf_counter()
    with DubClient(stack.api_url, stack.api_key) as client:
        job_id = client.upload(source)
        client.start(job_id, source_language="en", target_language=TARGET,
                     mixing_mode="voiceover_without_original_voice")
        # Polled every 0.2 s: the client sees the end within 0.2 s of it (1 s by default).
        job = client.wait(job_id, poll_s=0.2, timeout_s=max(3600.0, 4 * _duration_s(source)))
        if job["status"] != "completed":
            raise SystemExit(f"job {job_id} {job['status']}: {json.dumps(job.get('error'))}")
        client.download(job_id, out)
    wall = time.perf_counter() - t0
    stages = {s["stage"]: s["duration_ms"] / 1000
              for s in job["stages"] + job["languages"][0]["stages"]}
    return wall, stages


# ---- a long clip of the same kind ------------------------------------------------------

def long_clip(sample: Path, minutes: float, dest: Path) -> Path:
    """The sample repeated to ``minutes`` (two voices over music, as the sample is): its
    packets remuxed back to back, each repetition's timestamps shifted past the previous
    one's last decode time, nothing re-encoded."""
    reps = max(1, round(minutes * 60 / _duration_s(sample)))
    with av.open(str(dest), "w") as dst:
        outs: dict[int, Any] = {}
        base: dict[int, int] = {}
        for _ in range(reps):
            with av.open(str(sample)) as src:
                for s in src.streams:
                    if s.index not in outs:
                        outs[s.index] = dst.add_stream_from_template(s)
                first: dict[int, int] = {}
                end: dict[int, int] = {}
                for packet in src.demux():
                    if packet.dts is None or packet.pts is None:
                        continue
                    i = packet.stream.index
                    first.setdefault(i, packet.dts)
                    end[i] = packet.dts + (packet.duration or 1)
                    shift = base.get(i, 0) - (first[i] if base.get(i) else 0)
                    packet.dts += shift
                    packet.pts += shift
                    packet.stream = outs[i]
                    dst.mux(packet)
                for i, e in end.items():
                    start_of_rep = base.get(i, 0) - (first[i] if base.get(i) else 0)
                    base[i] = start_of_rep + e
    return dest


def _duration_s(path: Path) -> float:
    with av.open(str(path)) as c:
        return float(c.duration or 0) / 1_000_000


# ---- an hour of media ---------------------------------------------------------------------

def long_job(stack: Stack, sample: Path, minutes: float, root: Path) -> dict[str, Any]:
    """One job on ``minutes`` of the sample looped: its wall time and stage times, every
    worker's peak RSS during it, and the largest workflow history it left (events and
    bytes, against Temporal's limits of 51,200 events and 50 MB)."""
    clip = long_clip(sample, minutes, root / "hour.mp4")
    workers = stack.workers()
    reset_peak_rss(list(workers.values()))
    wall, stages = run_job(stack, clip, root / "out" / "hour.mp4")
    rss = {name: peak_rss_mb(pid) for name, pid in workers.items()}
    events, size = _largest_history(stack)
    return {"media_s": _duration_s(clip), "wall_s": wall, "stages": stages, "rss": rss,
            "history_events": events, "history_bytes": size}


def _largest_history(stack: Stack) -> tuple[int, int]:
    import asyncio

    from temporalio.client import Client

    async def scan() -> tuple[int, int]:
        client = await Client.connect(f"127.0.0.1:{stack.temporal_port}")
        most_events = most_bytes = 0
        async for wf in client.list_workflows():
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            most_events = max(most_events, len(history.events))
            most_bytes = max(most_bytes, len(history.to_json().encode()))
        return most_events, most_bytes

    return asyncio.run(scan())


# ---- uploads at disk speed ----------------------------------------------------------------

def upload_figures(stack: Stack, gigabytes: float, root: Path) -> dict[str, float]:
    """A file of ``gigabytes`` uploaded through the API (presigned PUT, local backend)
    against a plain copy of it on the same disk; the API's peak RSS."""
    big = root / "big.bin"
    block = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    with big.open("wb") as f:
        for _ in range(int(gigabytes * 1024 / 8)):
            f.write(block)
    size = big.stat().st_size
    t0 = time.perf_counter()
    shutil.copyfile(big, root / "copy.bin")
    os.sync()
    copy_s = time.perf_counter() - t0
    (root / "copy.bin").unlink()
    api = next(pid for pid in _children(stack.proc.pid)
               if b"api" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    before = rss_mb(api)
    reset_peak_rss([api])
    t0 = time.perf_counter()
    with DubClient(stack.api_url, stack.api_key, timeout_s=600) as client:
        client.upload(big)
    os.sync()
    upload_s = time.perf_counter() - t0
    big.unlink()
    return {"size_gb": size / 1e9, "copy_mb_s": size / 1e6 / copy_s,
            "upload_mb_s": size / 1e6 / upload_s, "api_rss_before_mb": before,
            "api_peak_rss_mb": peak_rss_mb(api)}


# ---- the tables --------------------------------------------------------------------------

@dataclass
class Figures:
    media_s: float
    anchor: list[float] = field(default_factory=list)
    anchor_float: list[float] = field(default_factory=list)
    job: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    busy: dict[str, list[float]] = field(default_factory=dict)


def measure(stack: Stack, anchors: tuple[Anchor, Anchor], source: Path, runs: int,
            out: Path) -> Figures:
    """Interleaved: the anchor, the anchor with the float vocoder, the job; each with how
    busy the cores were."""
    fig = Figures(_duration_s(source))
    for i in range(runs):
        for name, anchor, walls in (("anchor", anchors[0], fig.anchor),
                                    ("anchor_float", anchors[1], fig.anchor_float)):
            with CpuMeter() as cpu:
                walls.append(anchor.run(source, out / f"{name}-{i}.mp4"))
            fig.busy.setdefault(name, []).append(cpu.busy)
        with CpuMeter() as cpu:
            wall, stages = run_job(stack, source, out / f"job-{i}.mp4")
        fig.busy.setdefault("job", []).append(cpu.busy)
        fig.job.append(wall)
        fig.stages.append(stages)
        print(f"  {source.name} run {i + 1}/{runs}: anchor {fig.anchor[-1]:.1f} s "
              f"(float vocoder {fig.anchor_float[-1]:.1f} s), job {wall:.1f} s",
              file=sys.stderr)
    return fig


def table(name: str, fig: Figures) -> str:
    med = statistics.median
    a, af, j = med(fig.anchor), med(fig.anchor_float), med(fig.job)
    cores = os.cpu_count() or 1

    def busy(key: str) -> str:
        return f"{100 * med(fig.busy[key]):.0f} %"

    rows = [f"**{name}** ({fig.media_s:.1f} s of media), median of {len(fig.job)} "
            "interleaved runs\n",
            f"| | wall (s) | real-time factor | cores busy (of {cores}) |",
            "|---|---:|---:|---:|",
            f"| anchor: plain in-process chain (Kokoro as shipped) | {a:.1f} "
            f"| {a / fig.media_s:.2f} | {busy('anchor')} |",
            f"| anchor with the float vocoder | {af:.1f} | {af / fig.media_s:.2f} "
            f"| {busy('anchor_float')} |",
            f"| full job through API + Temporal | {j:.1f} | {j / fig.media_s:.2f} "
            f"| {busy('job')} |",
            f"| ratio job / anchor | {j / a:.2f} | | |",
            f"| ratio job / anchor with the float vocoder | {j / af:.2f} | | |", "",
            "| stage (full job) | median (s) | share of stage time |", "|---|---:|---:|"]
    per = {s: med(st.get(s, 0.0) for st in fig.stages) for s in STAGE_ORDER}
    total = sum(per.values()) or 1.0
    rows += [f"| {s} | {v:.2f} | {100 * v / total:.0f} % |" for s, v in per.items()]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--clip-minutes", type=float, default=0,
                        help="also measure a clip of this many minutes (e.g. 10)")
    parser.add_argument("--long-minutes", type=float, default=0,
                        help="also one job on this many minutes (e.g. 60): wall time, peak "
                             "RSS per worker, history size")
    parser.add_argument("--upload-gb", type=float, default=0,
                        help="also upload a file this large (e.g. 2) against a local copy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opendub-bench-") as tmp:
        root = Path(tmp)
        out = root / "out"
        out.mkdir()
        stack = start_stack(root)
        try:
            ready_s = wait_warm(stack)
            first_wall, first_stages = run_job(stack, args.sample, out / "first.mp4")
            print(f"  first job {first_wall:.1f} s (stack ready in {ready_s:.1f} s): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in first_stages.items()),
                  file=sys.stderr)
            anchors = (Anchor(root / "data" / "models"),
                       Anchor(root / "data" / "models", float_vocoder=True))
            for anchor in anchors:  # their own first runs: not counted
                anchor.run(args.sample, out / "anchor-warm.mp4")
            fig = measure(stack, anchors, args.sample, args.runs, out)
            long_fig = None
            if args.clip_minutes:
                clip = long_clip(args.sample, args.clip_minutes, root / "long.mp4")
                long_fig = measure(stack, anchors, clip, args.runs, out)
            rss = {name: peak_rss_mb(pid) for name, pid in stack.workers().items()}
            hour = (long_job(stack, args.sample, args.long_minutes, root)
                    if args.long_minutes else None)
            uploads = upload_figures(stack, args.upload_gb, root) if args.upload_gb else None
        finally:
            stack.stop()
    warm = statistics.median(fig.job)
    print(table(args.sample.name, fig))
    if long_fig is not None:
        print(table(f"{args.clip_minutes:g}-minute clip", long_fig))
    print("| first job after the stack starts | s |", "|---|---:|", sep="\n")
    print(f"| stack up, every worker warm | {ready_s:.1f} |")
    print(f"| first job | {first_wall:.1f} |")
    print(f"| warm job (median) | {warm:.1f} |")
    print(f"| ratio first / warm | {first_wall / warm:.2f} |\n")
    print("| worker | peak RSS (MB) |", "|---|---:|", sep="\n")
    for name, mb in sorted(rss.items()):
        print(f"| {name} | {mb:.0f} |")
    if hour:
        print(f"\n**One job on {hour['media_s'] / 60:.0f} minutes** of the sample looped\n",
              "| | |", "|---|---:|", sep="\n")
        print(f"| wall time | {hour['wall_s']:.0f} s (real-time factor "
              f"{hour['wall_s'] / hour['media_s']:.2f}) |")
        for stage in STAGE_ORDER:
            if stage in hour["stages"]:
                print(f"| {stage} | {hour['stages'][stage]:.0f} s |")
        for name, mb in sorted(hour["rss"].items()):
            print(f"| {name} peak RSS during it | {mb:.0f} MB |")
        print(f"| largest workflow history | {hour['history_events']} events, "
              f"{hour['history_bytes'] / 1e3:.0f} kB |")
    if uploads:
        print(f"\n| upload of {uploads['size_gb']:.1f} GB | |", "|---|---:|", sep="\n")
        print(f"| local file copy | {uploads['copy_mb_s']:.0f} MB/s |")
        print(f"| through the API | {uploads['upload_mb_s']:.0f} MB/s "
              f"({100 * uploads['upload_mb_s'] / uploads['copy_mb_s']:.0f} % of the copy) |")
        print(f"| API RSS before the upload | {uploads['api_rss_before_mb']:.0f} MB |")
        print(f"| API peak RSS during it | {uploads['api_peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
