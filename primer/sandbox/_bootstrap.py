"""Runs inside the sandbox process: contain first, then run the program, then sign.

Started as ``python -I -S _bootstrap.py SPEC_JSON`` by :mod:`primer.sandbox.runner` with the
nonce on stdin. Standard library only: it runs under whichever interpreter the sandbox picked.
While still root it enters fresh network and mount namespaces (so loopback is empty and
``/tmp``-like directories are the sandbox's own), sets the rlimits, drops to an unprivileged
uid (which makes ``RLIMIT_NPROC`` bite and leaves the rest of the disk read-only), reports the
layers that took effect, executes ``main.py`` and only then writes the nonce: a program that
exits early, crashes or is killed never writes it, so it can never count as passed.
"""

import os
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _isolate(spec, layers):
    """Namespaces: as root, net + mount; unprivileged, try a user namespace with a net one."""
    if not spec["network"] and not spec["hide"]:
        return
    libc = _libc()
    if os.geteuid() == 0:
        flags = (CLONE_NEWNET if spec["network"] else 0) | (CLONE_NEWNS if spec["hide"] else 0)
        if libc.unshare(flags) != 0:
            return
        layers += ["netns"] if spec["network"] else []
        if spec["hide"] and libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
            for path in spec["hide"]:
                if os.path.isdir(path):
                    libc.mount(b".", path.encode(), None, MS_BIND, None)  # "." = the workdir
            layers.append("mountns")
    elif spec["network"] and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        layers.append("netns")


def _limit(spec, layers):
    import resource

    for name, value in spec["rlimits"].items():
        soft, hard = (value, value) if isinstance(value, int) else value
        resource.setrlimit(getattr(resource, name), (soft, hard))
    layers.append("rlimits")
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
        layers.append("uid")


def main():
    spec = __import__("json").loads(sys.argv[1])
    status_fd = spec["status_fd"]
    nonce = os.read(0, 128).strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    layers = []
    os.chdir(spec["workdir"])  # first: the workdir may live under a directory hidden next
    _isolate(spec, layers)
    _limit(spec, layers)
    os.write(status_fd, ("L " + ",".join(layers) + "\n").encode())
    with open("main.py", encoding="utf-8") as f:
        code = compile(f.read(), "main.py", "exec")
    sys.argv = ["main.py"]
    exec(code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(status_fd, b"P " + nonce + b"\n")
    os._exit(0)  # no atexit hooks or lingering threads of the program get a say afterwards


main()
