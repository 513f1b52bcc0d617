"""The sandbox's limits and isolation switches, a typed config section."""

from __future__ import annotations

from pydantic import Field

from primer.config import ConfigModel


class SandboxConfig(ConfigModel):
    """How one untrusted program is contained; shared by evaluation and generation."""

    timeout_s: float = Field(10.0, gt=0, description=(
        "Wall-clock limit per program; at the deadline the whole process group (and every "
        "process of the sandbox uid) is killed."))
    cpu_s: int | None = Field(None, gt=0, description=(
        "RLIMIT_CPU seconds; default: the wall limit rounded up, plus one."))
    memory_mb: int = Field(2048, gt=0, description="RLIMIT_AS: address space per process.")
    file_size_mb: int = Field(16, gt=0, description=(
        "RLIMIT_FSIZE: largest file a program may write, its stdout and stderr included."))
    max_processes: int = Field(64, gt=0, description=(
        "RLIMIT_NPROC for the sandbox uid: contains fork bombs (needs drop_privileges)."))
    max_open_files: int = Field(256, gt=0, description="RLIMIT_NOFILE.")
    max_output_bytes: int = Field(16384, gt=0, description=(
        "Bytes of stdout and of stderr kept in a result (the head)."))
    isolate_network: bool = Field(True, description=(
        "Run in an empty network namespace (as root; else via a user namespace if allowed)."))
    drop_privileges: bool = Field(True, description=(
        "When started as root, run each program as a fresh unprivileged uid: RLIMIT_NPROC "
        "applies, nothing outside its temp dir is writable, and leftovers are swept by uid."))
    uid_range: tuple[int, int] = Field((200_000, 300_000), description=(
        "Unprivileged uids to draw from, [start, stop); a random one per program."))
    hide_dirs: list[str] = Field(["/tmp", "/var/tmp", "/dev/shm"], description=(
        "World-writable directories replaced by the program's own temp dir (mount namespace, "
        "as root); empty list: no mount namespace."))
    python: str | None = Field(None, description=(
        "Interpreter for programs (standard library only, run with -I -S). Default: this one, "
        "or /usr/bin/python3 when this one's files are not readable by the sandbox uid."))
