"""`trellis run`: an application with its sidecar injected, on the local platform.

The order of a launch (explicit capture):

1. lock the workload's name on this machine; make a private run directory;
2. check the service and any earlier registration of the name
   (`Registration.prepare`); get a join token into the run directory (0600);
3. reserve the sidecar's ports (`PortAllocator`), register the WorkloadEntry
   (out of service), start `trellis proxy` and wait until it is ready
   (`Sidecar.wait_ready`, bounded); a port clash starts step 3 over;
4. start the application with `HTTP_PROXY` pointing at the sidecar; once it
   accepts connections on its port, the entry joins the service (`app` label);
5. supervise: the first SIGINT/SIGTERM takes the workload out of its service
   and waits (bounded) until every proxy has acknowledged that, then is passed
   on to the application (later ones at once); if the sidecar dies, the
   application is stopped;
6. when the application has exited: out of service (if not yet), drain the
   sidecar, delete the registration, release ports and locks, remove the run
   directory; exit with the application's status (125 when the launcher or
   the sidecar failed).

Transparent capture (root on Linux) differs in step 3
(`trellis.platform.transparent`): instead of loopback ports, the workload gets
a network namespace of its own on the bridge, whose /etc/hosts follows the
services' virtual IPs and whose iptables rules send the application's TCP to
the sidecar running in it; the WorkloadEntry is the namespace's address with
the application's port. The namespace goes last, in step 6.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Awaitable

from trellis.platform.api_client import ControlPlaneApi, rejection
from trellis.platform.child import (
    application_stdin,
    describe_exit,
    exit_status,
    signal_group,
    signal_name,
    spawn,
    stop,
)
from trellis.platform.launch_settings import LaunchSettings
from trellis.platform.netns import WorkloadNetwork
from trellis.platform.paths import (
    RunDir,
    lock_workload,
    release,
    remove_stale_run_dirs,
    runtime_base,
)
from trellis.platform.ports import PortAllocator, PortLease
from trellis.platform.registration import Registration
from trellis.platform.sidecar import PortClashError, Sidecar, accepts, listening
from trellis.platform.spec import (
    LaunchError,
    SidecarPorts,
    app_environment,
    child_environment,
    proxy_arguments,
)
from trellis.platform.transparent import TransparentCapture

log = logging.getLogger("trellis.run")

LAUNCH_FAILED = 125
"""Exit status when the launcher or the sidecar failed (as `docker run` does)."""
PORT_ATTEMPTS = 3
SERVING_WAIT = 600.0
"""How long the application may take to accept connections before it is left out of its
service (a client-only application never listens)."""
DEREGISTER_TIMEOUT = 10.0
PROPAGATION_WAIT = 3.0
"""Bound on waiting for every proxy to acknowledge that the workload left its service."""
MAX_SIGNALS = 1000


def run(settings: LaunchSettings) -> int:
    """Launch and supervise; the application's exit status (125: launch failed)."""
    return asyncio.run(Launch(settings).run())


class Launch:
    """One launch: what it started and holds, so that everything is undone at the end."""

    def __init__(self, settings: LaunchSettings) -> None:
        self.settings = settings
        self.spec = settings.workload
        self.api = ControlPlaneApi(settings.server, settings.token)
        owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.registration = Registration(self.api, self.spec, owner)
        self.signals: asyncio.Queue[int] = asyncio.Queue()
        self.name_lock: int | None = None
        self.run_dir: RunDir | None = None
        self.leases: list[PortLease] = []
        self.sidecar: Sidecar | None = None
        self.app: asyncio.subprocess.Process | None = None
        self.ports: SidecarPorts | None = None
        self.network: WorkloadNetwork | None = None
        self.capture: TransparentCapture | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.signals.put_nowait, signum)
        try:
            return await self._run()
        except (LaunchError, OSError) as exc:  # OSError: a file or directory of the launch
            log.error("%s", exc)
            return LAUNCH_FAILED
        finally:
            await self._clean_up()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _run(self) -> int:
        startup = asyncio.create_task(self._start(), name="start")
        interrupted = asyncio.create_task(self.signals.get(), name="signal")
        await asyncio.wait({startup, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, LaunchError):
                await startup
            signum = interrupted.result()
            log.info("received %s before the application started: stopping", signal_name(signum))
            return 128 + signum
        if interrupted.done():  # came with the end of the start: handle it when supervising
            self.signals.put_nowait(interrupted.result())
        else:
            interrupted.cancel()
        status = startup.result()
        if status is not None:
            return status
        return await self._supervise()

    async def _start(self) -> int | None:
        """Steps 1-4; None when the application runs, else the status to exit with."""
        settings, spec = self.settings, self.spec
        if shutil.which(settings.command[0], path=settings.environ.get("PATH")) is None:
            log.error("%s: command not found", settings.command[0])
            return 127
        base = settings.runtime_dir or runtime_base(dict(settings.environ))
        remove_stale_run_dirs(base)
        self.name_lock = lock_workload(base, self.api.server, spec)
        self.run_dir = RunDir.create(base, spec)
        await self.registration.prepare()
        self.run_dir.write_token(
            await self.api.join_token(
                spec.namespace, spec.account, spec.name, f"{settings.token_ttl_seconds}s"
            )
        )
        if settings.capture == "transparent":
            await self._start_in_namespace()
            assert self.ports is not None
            return await self._start_app(self.ports)
        allocator = PortAllocator(base)
        if spec.app_port is not None:
            self.leases.append(allocator.reserve(spec.app_port))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                await self._start_sidecar(allocator)
                break
            except PortClashError as exc:
                if attempt == PORT_ATTEMPTS:
                    raise
                log.warning("%s; trying other ports", exc)
        assert self.ports is not None
        return await self._start_app(self.ports)

    async def _start_sidecar(self, allocator: PortAllocator) -> None:
        settings, spec = self.settings, self.spec
        assert self.run_dir is not None
        if self.sidecar is not None:  # a previous attempt clashed
            await self.sidecar.stop(grace=2.0)
            self.sidecar = None
            self.leases.pop().release()
        count = 3 if spec.app_port is not None else 4
        lease = allocator.allocate(count, avoid=[spec.app_port or 0])
        self.leases.append(lease)
        outbound, inbound, admin, *rest = lease.ports
        ports = SidecarPorts(outbound, inbound, admin, spec.app_port or rest[0])
        self.ports = ports
        await self.registration.register(ports)
        arguments = proxy_arguments(
            spec,
            ports,
            xds=settings.xds,
            token_file=str(self.run_dir.token_file),
            drain_time=settings.drain_time,
            log_level=settings.sidecar_log_level,
        )
        self.sidecar = Sidecar(
            [*settings.proxy_command, *arguments],
            child_environment(settings.environ),
            ports.admin,
            settings.sidecar_log or self.run_dir.sidecar_log,
        )
        await self.sidecar.start()
        listeners: dict[str, int | None] = {
            "outbound": ports.outbound,
            f"inbound_{ports.inbound}": ports.inbound,
        }
        await self.sidecar.wait_ready(listeners, settings.ready_timeout, self._rejected)
        log.info(
            "sidecar (pid %d) ready: outbound (HTTP_PROXY) 127.0.0.1:%d, inbound 127.0.0.1:%d "
            "-> application 127.0.0.1:%d, admin 127.0.0.1:%d",
            self.sidecar.pid,
            ports.outbound,
            ports.inbound,
            ports.app,
            ports.admin,
        )

    async def _start_in_namespace(self) -> None:
        """Step 3 of transparent capture (`trellis.platform.transparent`)."""
        assert self.run_dir is not None
        self.capture = TransparentCapture(self.settings, self.api, self.registration)
        try:
            await self.capture.start(self.run_dir, self._rejected)
        finally:  # whatever it made, the clean-up undoes
            self.network = self.capture.network
            self.ports = self.capture.ports
            self.sidecar = self.capture.sidecar

    async def _rejected(self) -> str | None:
        try:
            return rejection(await self.api.proxies(), self.spec.node_id)
        except LaunchError:
            return None  # only a diagnosis: the wait goes on

    async def _start_app(self, ports: SidecarPorts) -> int | None:
        command = self.settings.command
        prefix = self.network.exec_prefix() if self.network is not None else []
        stdin = application_stdin()
        try:
            self.app = await spawn(
                [*prefix, *command],
                app_environment(self.settings.environ, self.spec, ports),
                stdin=stdin,
            )
        except FileNotFoundError:
            log.error("%s: command not found", command[0])
            return 127
        except PermissionError:
            log.error("%s: permission denied", command[0])
            return 126
        log.info("started %s (pid %d)", command[0], self.app.pid)
        self.tasks.append(asyncio.create_task(self._join_service(ports.app), name="serving"))
        self.tasks.append(asyncio.create_task(self._refresh_token(), name="join token"))
        if self.capture is not None:
            self.tasks.append(asyncio.create_task(self.capture.follow_services(), name="hosts"))
        return None

    async def _join_service(self, port: int) -> None:
        """Put the workload into its service once the application accepts connections."""
        deadline = time.monotonic() + SERVING_WAIT
        delay = 0.05
        while time.monotonic() < deadline:
            if await self._app_listens(port):
                try:
                    await self.registration.set_serving()
                except LaunchError as exc:
                    log.warning("%s; retrying", exc)
                else:
                    log.info(
                        "serving: %s/%s is an endpoint of %s",
                        self.spec.namespace,
                        self.spec.name,
                        self.spec.host,
                    )
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        log.info("the application has not listened on port %d: not in its service", port)

    async def _app_listens(self, port: int) -> bool:
        if self.network is None:
            return await accepts(port)
        # From outside, the port leads to the sidecar: ask the namespace's socket table.
        return self.sidecar is not None and listening(self.sidecar.pid, port)

    async def _refresh_token(self) -> None:
        """Write a new join token at each half-life: the sidecar renews its certificate with it."""
        assert self.run_dir is not None
        spec, ttl = self.spec, self.settings.token_ttl_seconds
        wait = ttl / 2
        for _ in range(1_000_000):
            await asyncio.sleep(wait)
            try:
                token = await self.api.join_token(
                    spec.namespace, spec.account, spec.name, f"{ttl}s"
                )
            except LaunchError as exc:
                log.warning("cannot renew the join token: %s", exc)
                wait = max(1.0, ttl / 20)
                continue
            self.run_dir.write_token(token)
            wait = ttl / 2

    async def _supervise(self) -> int:
        assert self.app is not None and self.sidecar is not None
        app_done = asyncio.create_task(self.app.wait(), name="application")
        sidecar_done = asyncio.create_task(self.sidecar.wait(), name="sidecar")
        try:
            for _ in range(MAX_SIGNALS):
                received = asyncio.create_task(self.signals.get(), name="signal")
                await asyncio.wait(
                    {app_done, sidecar_done, received}, return_when=asyncio.FIRST_COMPLETED
                )
                if not received.done():
                    received.cancel()
                if app_done.done():
                    break
                if sidecar_done.done():
                    return await self._sidecar_died(sidecar_done.result())
                signum = received.result()
                await self._leave_service()  # the first time; later at once
                log.info("passing %s to the application", signal_name(signum))
                signal_group(self.app, signum)
            status = await app_done
        finally:
            sidecar_done.cancel()
            app_done.cancel()
        log.info("the application exited with status %d", exit_status(status))
        return exit_status(status)

    async def _leave_service(self) -> None:
        """Take the workload out of its service, and wait (bounded) until every proxy has
        that change: then no peer sends it new requests. A no-op the second time."""
        for task in self.tasks:  # no more joining the service, or renewing the token
            task.cancel()
        try:
            version = await asyncio.wait_for(
                self.registration.set_serving(False), DEREGISTER_TIMEOUT
            )
        except (LaunchError, TimeoutError) as exc:
            log.warning("could not take %s out of service: %s", self.spec.name, exc or "timeout")
            return
        if version is None:
            return
        log.info("%s/%s left %s", self.spec.namespace, self.spec.name, self.spec.host)
        if not await self.api.wait_acknowledged(version, PROPAGATION_WAIT):
            log.info("not every proxy acknowledged the change within %gs", PROPAGATION_WAIT)

    async def _sidecar_died(self, returncode: int) -> int:
        assert self.app is not None and self.sidecar is not None
        log.error(
            "the sidecar ended (%s) while the application ran; stopping the application. "
            "The sidecar's log:\n%s",
            describe_exit(returncode),
            self.sidecar.tail(),
        )
        await stop(self.app, self.settings.stop_timeout)
        return LAUNCH_FAILED

    async def _deregister(self) -> None:
        try:
            await asyncio.wait_for(self.registration.deregister(), DEREGISTER_TIMEOUT)
        except (LaunchError, TimeoutError) as exc:
            log.warning("could not remove %s: %s", self.registration.where, exc or "timed out")
        else:
            log.info("removed %s", self.registration.where)

    async def _clean_up(self) -> None:
        """Undo everything that was done, in reverse, each step on its own."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, LaunchError):
                await task
        sidecar, app = self.sidecar, self.app
        if sidecar is not None and sidecar.returncode is None:
            await _step("leave the service", self._leave_service())  # before the drain
        if app is not None and app.returncode is None:
            await _step("stop the application", stop(app, self.settings.stop_timeout))
        if sidecar is not None:
            await _step("stop the sidecar", sidecar.stop(grace=self.settings.drain_time + 5.0))
            log.info("sidecar stopped (%s)", describe_exit(sidecar.returncode))
        if self.registration.registered:  # last: while a proxy runs, its entry describes it
            await _step("deregister", self._deregister())
        if self.network is not None:  # after the sidecar: its namespace, rules and link
            await _step("remove the network namespace", asyncio.to_thread(self.network.close))
        for lease in self.leases:
            lease.release()
        if self.run_dir is not None:
            self.run_dir.remove()
        if self.name_lock is not None:
            release(self.name_lock)
        await self.api.aclose()


async def _step(what: str, step: Awaitable[object]) -> None:
    """One clean-up step: a failure is logged, and the next step runs all the same."""
    try:
        await step
    except Exception:
        log.exception("clean-up: cannot %s", what)
