"""Kernels we start ourselves talk to us over IPC (ZMQ on Unix sockets in a private folder), not TCP.

jupyter_client's default transport is TCP on localhost, and current ipykernel warns about it on
every start (`Kernel is running over TCP without encryption`): any local user can connect to
an open port. The demo, the gallery, papermill runs and the tests start kernels only for
themselves, on this machine, so IPC is the right transport and the warning has nothing to say.

    NotebookClient(nb, kernel_manager_class=IPCKernelManager, ...)
    papermill.execute_notebook(src, dst, kernel_manager_class=IPCKernelManager)

The sockets live in a fresh folder from `tempfile.mkdtemp` (mode 0700: only this user can
connect), removed when the kernel shuts down. A relative `ip` (jupyter_client's `kernel-ipc`
default) would put the sockets in the working directory instead. On Windows, where ZMQ has no
IPC transport, the manager keeps TCP.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

__all__ = ["IPCKernelManager"]


class IPCKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernel listens on Unix sockets in a private temporary folder."""

    _ipc_dir: str | None = None     # the folder of the sockets (ours to remove); None until `ip` is needed

    @default("transport")
    def _default_transport(self) -> str:
        return "tcp" if os.name == "nt" else "ipc"

    def _ip_default(self) -> str:   # jupyter_client's dynamic default of `ip` (see ConnectionFileMixin)
        if self.transport != "ipc":
            return super()._ip_default()
        self._ipc_dir = tempfile.mkdtemp(prefix="notebook_orch-kernel-")
        return os.path.join(self._ipc_dir, "kernel")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None

    cleanup_resources = _async_cleanup_resources   # as AsyncKernelManager aliases it
