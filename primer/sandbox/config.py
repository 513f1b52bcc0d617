"""The sandbox's limits and isolation switches, a typed config section."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from primer.config import ConfigModel

Layer = Literal["session", "tempdir", "env", "cgroup", "mountns", "ipcns", "pidns", "netns",
                "readonly", "tmpfs", "rlimits", "uid", "guard"]
LAYERS: tuple[str, ...] = get_args(Layer)


class SandboxConfig(ConfigModel):
    """How one untrusted program is contained; shared by evaluation and generation."""

    timeout_s: float = Field(10.0, gt=0, description=(
        "Wall-clock limit per program; at the deadline the whole process group (and every "
        "process of the sandbox uid) is killed."))
    cpu_s: int | None = Field(None, gt=0, description=(
        "RLIMIT_CPU seconds; default: the wall limit rounded up, plus one."))
    memory_mb: int = Field(2048, gt=0, description=(
        "Memory of a program: RLIMIT_AS per process, and (plus 64 MiB of headroom) the "
        "memory limit of its cgroup, all its processes and temp files together."))
    file_size_mb: int = Field(16, gt=0, description=(
        "RLIMIT_FSIZE: largest file a program may write, its stdout and stderr included."))
    max_processes: int = Field(64, gt=0, description=(
        "Processes of a program in total: RLIMIT_NPROC of its uid and its cgroup's pids.max."))
    disk_mb: int = Field(64, gt=0, description=(
        "Size of the program's temp dir (a tmpfs; also seen at /tmp, /var/tmp, /dev/shm): all "
        "its files together. Nothing else is writable."))
    max_open_files: int = Field(256, gt=0, description="RLIMIT_NOFILE.")
    max_output_bytes: int = Field(16384, gt=0, description=(
        "Bytes of stdout and of stderr kept in a result (the head)."))
    isolate_network: bool = Field(True, description=(
        "Run in an empty network namespace (as root; else via a user namespace if allowed)."))
    drop_privileges: bool = Field(True, description=(
        "When started as root, run each program as a fresh unprivileged uid: RLIMIT_NPROC "
        "applies, nothing outside its temp dir is writable, and leftovers are swept by uid."))
    uid_range: tuple[int, int] = Field((20_000, 65_000), description=(
        "Unprivileged uids to draw from, [start, stop); a random one per program."))
    hide_dirs: list[str] = Field(["/tmp", "/var/tmp", "/dev/shm"], description=(
        "Directories that show the program's own temp dir instead (programs expect to write "
        "there); every other mount is read-only to it."))
    conceal_dirs: list[str] | None = Field(None, description=(
        "Directories replaced by an empty one for the program. Default: the project tree, "
        "the worker's home and /run/secrets, /var/run/secrets (service-account tokens)."))
    allow_missing: list[Layer] = Field([], description=(
        "Isolation layers the worker may run without (a degraded mode, recorded in every "
        "result). Default: none, so a worker where a layer cannot be had refuses to run "
        "programs and names the layer and how to get it."))
    python: str | None = Field(None, description=(
        "Interpreter for programs (standard library only, run with -I -S). Default: this one, "
        "or /usr/bin/python3 when this one's files are not readable by the sandbox uid."))
