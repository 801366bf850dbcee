"""The soak's processes: the three emulators, three gateway instances behind the front end
(:mod:`tests.soak.frontend`), the sweep function, a scheduler, and the levers the faults pull.

The emulators and the sweep function start as ``make up`` starts them (``emulator.procs``);
the gateways reach Firestore through a throttling proxy (tests/throttle.py) left wide open
until a throttle fault narrows it. The scheduler is a task in the population's loop rather
than ``emulator.scheduler``'s process, so that the harness knows when a sweep is in flight (to
kill the function in the middle of one) and can fire extra triggers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from emulator import procs
from emulator.scheduler import JOB_NAME
from tests.soak import memprobe
from tests.soak.frontend import Frontend
from tests.throttle import ThrottleProxy

HOST = "127.0.0.1"
#: Where the gateway and the sweep function are run from: this checkout, or another one
#: (``SOAK_SOURCE``, e.g. a ``git worktree`` of a commit) while this one is being edited.
SOURCE = Path(os.environ.get("SOAK_SOURCE") or procs.ROOT)


@dataclass(frozen=True, slots=True)
class Intervals:
    """The gateway's and the sweep's timing (seconds), short so a run sees many rounds."""

    ping: float = 1.0
    pong_timeout: float = 20.0
    sweep: float = 2.0
    #: SWEEP_CLAIM_TTL: how long the claims of a sweep killed mid-sweep hold its users (the
    #: function's default, 300 s, is sized for a 60 s schedule; at 2 s it would outlast a run).
    claim_ttl: float = 10.0


@dataclass(slots=True)
class Instance:
    """One gateway slot: a fixed port behind the front end; each start is a new instance id,
    as a replacement instance on Cloud Run would be."""

    index: int
    port: int
    process: procs.Process | None = None
    instance_id: str = ""
    generation: int = 0
    #: Its RSS (bytes) before the population connected; None once it was ever restarted.
    baseline_rss: int | None = None
    restarted: bool = False

    @property
    def alive(self) -> bool:
        return (
            self.process is not None
            and self.process.popen is not None
            and (self.process.popen.poll() is None)
        )


@dataclass
class Stack:
    log_dir: Path
    intervals: Intervals = field(default_factory=Intervals)
    project: str = field(default_factory=lambda: f"demo-soak-{secrets.token_hex(4)}")
    topic: str = field(default_factory=lambda: f"soak-{secrets.token_hex(4)}")
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    callback_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    instances: list[Instance] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)
    sweeps_started: int = 0
    sweeps_failed: int = 0

    def __post_init__(self) -> None:
        self.ports = {name: procs.free_port() for name in ("firestore", "auth", "pubsub")}
        self.firestore = procs.firestore_process(HOST, self.ports["firestore"], self.log_dir)
        self.auth = procs.auth_process(HOST, self.ports["auth"], self.project, self.log_dir)
        self.pubsub = procs.pubsub_process(HOST, self.ports["pubsub"], self.log_dir)
        self.throttle = ThrottleProxy(self.firestore_host)
        self.frontend = Frontend(procs.free_port(), [])
        self.function: procs.Process | None = None
        self.function_port = procs.free_port()
        self._sweeps: set[asyncio.Task[None]] = set()
        self._in_flight = 0

    @property
    def firestore_host(self) -> str:
        return f"{HOST}:{self.ports['firestore']}"

    @property
    def auth_host(self) -> str:
        return f"{HOST}:{self.ports['auth']}"

    @property
    def pubsub_host(self) -> str:
        return f"{HOST}:{self.ports['pubsub']}"

    @property
    def memprobe_dir(self) -> Path:
        return self.log_dir / "memprobe"

    def probe_memory(self, trim: bool) -> None:
        """With SOAK_MEMPROBE: each instance never restarted writes its memory probe."""
        if not memprobe.enabled():
            return
        targets = {
            i.instance_id: i.process.popen.pid
            for i in self.instances
            if i.alive and not i.restarted and i.process and i.process.popen
        }
        memprobe.request(self.memprobe_dir, targets, trim)
        if not trim:
            memprobe.attach_heaptrack(self.memprobe_dir, targets)

    @property
    def live_ids(self) -> set[str]:
        return {i.instance_id for i in self.instances if i.alive}

    # Start and stop.

    def start_emulators(self) -> None:
        for child in (self.firestore, self.auth, self.pubsub):
            child.start()
        self.firestore.wait_ready(90)
        self.pubsub.wait_ready(60)
        self.auth.wait_ready(120)
        self.throttle.start()

    def gateway_env(self, instance: Instance) -> dict[str, str]:
        return {
            "FIRESTORE_EMULATOR_HOST": self.throttle.address,
            "FIREBASE_AUTH_EMULATOR_HOST": self.auth_host,
            "AUTH_MODE": "firebase",
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GATEWAY_ADMIN_TOKEN": self.admin_token,
            "GATEWAY_CALLBACK_TOKEN": self.callback_token,
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(instance.port),
            "GATEWAY_INSTANCE_ID": instance.instance_id,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "PUBSUB_TOPIC": self.topic,
            "PING_INTERVAL": f"{self.intervals.ping:g}",
            "PONG_TIMEOUT": f"{self.intervals.pong_timeout:g}",
            "SWEEP_INTERVAL": f"{self.intervals.sweep:g}",
            # Every client reaches the gateways from 127.0.0.1 through the front end.
            "WS_MAX_CONNECTS_PER_MINUTE": "0",
            "WS_PUBLIC_ROOM_PREFIXES": "public:",
            "LOG_LEVEL": "INFO",
        }

    def launch(self, instance: Instance) -> procs.Process:
        instance.generation += 1
        instance.instance_id = f"soak-{instance.index}-g{instance.generation}"
        process = procs.gateway_process(
            self.gateway_env(instance), HOST, instance.port, self.log_dir
        )
        process.log_path = self.log_dir / f"gateway-{instance.index}.log"
        if memprobe.enabled():
            # Debug only: the gateway under tracemalloc and the memory probes (docs/soak.md).
            process.argv = [sys.executable, "-m", "tests.soak.memprobe"]
            process.env = {**process.env, "SOAK_MEMPROBE_DIR": str(self.memprobe_dir)}
        process.cwd = SOURCE
        process.start()
        instance.process = process
        return process

    def start_gateways(self, count: int = 3) -> None:
        self.instances = [Instance(i, procs.free_port()) for i in range(count)]
        started = [self.launch(instance) for instance in self.instances]
        for process in started:
            process.wait_ready(60)
        self.frontend.backends[:] = [i.port for i in self.instances]

    def start_function(self) -> None:
        env = {
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "FIREBASE_AUTH_EMULATOR_HOST": self.auth_host,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GATEWAY_CALLBACK_TOKEN": self.callback_token,
            "GATEWAY_URL": self.frontend.url,
            "PONG_TIMEOUT": f"{self.intervals.pong_timeout:g}",
            "SWEEP_INTERVAL": f"{self.intervals.sweep:g}",
            "SWEEP_CLAIM_TTL": f"{self.intervals.claim_ttl:g}",
        }
        self.function = procs.function_process(env, HOST, self.function_port, self.log_dir)
        self.function.argv = [
            f"--source={SOURCE / 'functions' / 'main.py'}" if a.startswith("--source=") else a
            for a in self.function.argv
        ]
        self.function.start()

    def stop(self) -> None:
        """Stop every process, all at once (each drain or emulator shutdown takes seconds)."""
        children = [i.process for i in self.instances if i.process is not None]
        children += [self.function, self.pubsub, self.auth, self.firestore]
        stoppers = []
        for child in children:
            if child is None:
                continue
            # A stopped Firestore would not hear SIGTERM.
            if child.popen is not None and child.popen.poll() is None:
                _signal_group(child, signal.SIGCONT)
            stopper = threading.Thread(target=child.stop, kwargs={"grace": 5})
            stopper.start()
            stoppers.append(stopper)
        for stopper in stoppers:
            stopper.join()
        self.throttle.stop()

    # The scheduler.

    async def schedule(self, stop: asyncio.Event) -> None:
        """Trigger a sweep every SWEEP_INTERVAL until ``stop``, never two of its own at once
        (Cloud Scheduler's job); duplicate triggers come from ``trigger()``."""
        interval = self.intervals.sweep
        while not stop.is_set():
            started = time.monotonic()
            await self._sweep()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def trigger(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self._sweep())
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)
        return task

    @property
    def sweeping(self) -> bool:
        return self._in_flight > 0

    async def _sweep(self) -> None:
        headers = {
            "X-CloudScheduler": "true",
            "X-CloudScheduler-JobName": JOB_NAME,
            "User-Agent": "Google-Cloud-Scheduler",
        }
        self.sweeps_started += 1
        self._in_flight += 1
        try:
            async with httpx.AsyncClient(timeout=120) as http:
                answer = await http.post(
                    f"http://{HOST}:{self.function_port}/", headers=headers, content=b""
                )
            if answer.status_code >= 300:
                self.sweeps_failed += 1
        except httpx.HTTPError:
            self.sweeps_failed += 1
        finally:
            self._in_flight -= 1

    # Levers the faults pull.

    def kill_instance(self, index: int) -> str:
        instance = self.instances[index]
        assert instance.process is not None and instance.process.popen is not None
        instance.process.popen.kill()
        instance.process.popen.wait()
        self.killed.add(instance.instance_id)
        return instance.instance_id

    async def drain_instance(self, index: int) -> str:
        instance = self.instances[index]
        assert instance.process is not None and instance.process.popen is not None
        instance.process.popen.send_signal(signal.SIGTERM)
        await asyncio.to_thread(instance.process.popen.wait, 60)
        self.drained.add(instance.instance_id)
        return instance.instance_id

    async def restart_instance(self, index: int) -> None:
        instance = self.instances[index]
        instance.restarted = True
        instance.baseline_rss = None
        process = self.launch(instance)
        await asyncio.to_thread(process.wait_ready, 60)

    def pause_firestore(self, paused: bool) -> None:
        _signal_group(self.firestore, signal.SIGSTOP if paused else signal.SIGCONT)

    async def kill_pubsub(self) -> None:
        await asyncio.to_thread(_kill_group, self.pubsub)

    async def start_pubsub(self) -> None:
        self.pubsub.start()
        await asyncio.to_thread(self.pubsub.wait_ready, 60)

    async def kill_function(self) -> None:
        """SIGKILL the sweep function, in the middle of a sweep: one is triggered first when
        none is in flight, and given a moment to get going."""
        if not self.sweeping:
            self.trigger()
            await asyncio.sleep(0.3)
        assert self.function is not None
        await asyncio.to_thread(_kill_group, self.function)

    async def restart_function(self) -> None:
        assert self.function is not None
        self.function.start()
        await asyncio.to_thread(self.function.wait_ready, 60)


def _signal_group(process: procs.Process, signum: signal.Signals) -> None:
    if process.popen is None:
        return
    try:
        os.killpg(process.popen.pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(process: procs.Process) -> None:
    """SIGKILL a process and whatever it spawned (Java under a launcher script)."""
    _signal_group(process, signal.SIGKILL)
    if process.popen is not None:
        process.popen.wait()


def rss(pid: int) -> int | None:
    """A process's resident set size in bytes (Linux), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
