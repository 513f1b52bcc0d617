"""Runs inside the sandbox: contain first, report what held, then run the program, then sign.

Started once per worker as ``python -I -S _bootstrap.py SOCKET_FD`` by
:mod:`primer.sandbox.runner`: a pre-started interpreter (a "zygote") that never runs untrusted
code itself. Per program it receives a request on the socket (the spec, the environment, the
nonce, the wall limit; stdout, stderr and the two pipes as file descriptors), forks, and
answers with the exit status once the program's process group is dead. Forking saves a fresh
interpreter and its imports per program, which was most of a program's overhead. The forked
child closes every descriptor but its own five before anything else. Standard library only:
it runs under whichever interpreter the sandbox picked.

Per program, three processes, so that the program is never the init of its PID namespace
(init ignores signals it has no handler for, which would change what programs see):

- *outer* (root, host PID namespace): joins the program's cgroups, unshares the mount, IPC,
  network, UTS and PID namespaces, forks the init, waits and exits with the program's status;
- *init* (PID 1): sets up the file-system view, forks the program, reaps, exits when the
  program ends, which makes the kernel kill every process left in the namespace;
- *program*: rlimits, a random uid, no new privileges, then reports the layers on the setup
  pipe and closes it (so what arrives there was written before any untrusted code ran), then
  runs ``main.py`` under an audit guard and only afterwards writes the nonce on the status pipe.

The guard keeps the nonce out of the program's reach: no Python route to the frame that holds
it (frame, gc and tracing introspection refused), no native code (``ctypes``, test and
sub-interpreter modules and non-stdlib imports refused; the temp dir is ``noexec``, the rest
read-only), no ``/proc/*/mem``, and the process is not dumpable, so no other process of the
sandbox uid may read its memory. The guard is not the containment: the kernel layers are.
"""

import contextlib
import os
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38

_DENIED_EVENTS = {"sys._getframe", "sys._current_frames", "sys._current_exceptions",
                  "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers",
                  "gc.get_referents", "code.__new__"}
_FRAME_ATTRS = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"}
_DENIED_MODULES = ("ctypes", "_ctypes", "_test", "_xx", "_interp")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, source, target, fstype, flags, data=None):
    source, target, fstype, data = (x.encode() if isinstance(x, str) else x
                                    for x in (source, target, fstype, data))
    if libc.mount(source, target, fstype, flags, data) != 0:
        raise OSError(__import__("ctypes").get_errno(), f"mount {target}")


def _join_cgroups(spec, layers):
    try:
        for path in spec["cgroups"]:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
    except OSError:
        return
    if spec["cgroups"]:
        layers.append("cgroup")


def _unshare(libc, spec, layers):
    flags = {"mountns": CLONE_NEWNS, "ipcns": CLONE_NEWIPC, "pidns": CLONE_NEWPID | CLONE_NEWUTS}
    if spec["network"]:
        flags["netns"] = CLONE_NEWNET
    for layer, flag in flags.items():  # one at a time: each missing layer is named
        if libc.unshare(flag) == 0:
            layers.append(layer)


def _mount_points():
    """Every mount point of this namespace, parents first (``\\040``-style escapes decoded)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        rows = [line.split() for line in f]
    return [(r[4].encode().decode("unicode_escape").encode("latin-1").decode(),
             r[5].split(",")) for r in rows]


def _read_only(libc, layers):
    """Remount every mount read-only and nosuid, keeping the flags it had (locked in a userns)."""
    failed = []
    for target, options in _mount_points():
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
        flags |= sum(MOUNT_FLAGS.get(o, 0) for o in options)
        try:
            _mount(libc, None, target, None, flags)
        except OSError:
            if "ro" not in options:
                failed.append(target)
    if not failed:
        layers.append("readonly")
    return failed


def _file_view(libc, spec, layers):
    """Private mounts, all read-only; the temp dir a size-capped ``noexec`` tmpfs, also seen at
    ``/tmp`` & co.; the project tree and secrets under empty read-only tmpfs; a fresh /proc."""
    work, uid = spec["workdir"], spec["uid"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _read_only(libc, layers)
    with open(os.path.join(work, "main.py"), "rb") as f:
        source = f.read()
    _mount(libc, "tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={spec['disk_mb']}m,mode=0700")
    os.chdir(work)  # the tmpfs: its path is hidden once it is bound over /tmp
    with open("main.py", "wb") as f:
        f.write(source)
    for hidden in spec["hide"]:
        if os.path.isdir(hidden):
            _mount(libc, ".", hidden, None, MS_BIND)
    keep = (work, os.path.dirname(os.__file__))  # never conceal the temp dir or the stdlib
    for secret in spec["conceal"]:
        inside = secret.rstrip("/") + "/"
        if os.path.isdir(secret) and not any(k.startswith(inside) for k in keep):
            _mount(libc, "tmpfs", secret, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=4k,mode=0555")
    if uid is not None:  # last: without CAP_DAC_OVERRIDE we cannot enter it afterwards
        os.chown("main.py", uid, uid)
        os.chown(".", uid, uid)
    layers.append("tmpfs")
    if "pidns" in layers:
        try:
            _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            layers.remove("pidns")  # another process's /proc would still be visible


def _drop(libc, spec, layers):
    import resource

    if spec["uid"] is not None and "tmpfs" not in layers:  # runs in the worker's own dir
        try:
            os.chown(".", spec["uid"], spec["uid"])
            os.chown("main.py", spec["uid"], spec["uid"])
        except OSError:
            pass  # read-only: the program cannot write its temp dir
    if spec["uid"] is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")  # under a shared memory limit the kernel kills programs first
        except OSError:
            pass
    for name, value in spec["rlimits"].items():
        soft, hard = (value, value) if isinstance(value, int) else value
        resource.setrlimit(getattr(resource, name), (soft, hard))
    layers.append("rlimits")
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
        layers.append("uid")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 \
            and libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
        layers.append("guard")


def _is_proc_mem(path):
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not isinstance(path, str):
        return False  # an fd already open: memory can only have been opened by a path
    return os.path.basename(path.rstrip("/")) in ("mem", "pagemap") \
        or os.path.realpath(path).startswith("/proc/") and path.endswith("mem")


def _guard(event, args):
    """Audit hook: refuse the Python routes to the bootstrap's frame and to raw memory."""
    if event in _DENIED_EVENTS or event.startswith("ctypes."):
        raise ValueError(f"{event} is not allowed in the sandbox")
    if event == "object.__getattr__" and args[1] in _FRAME_ATTRS:
        raise ValueError(f"{args[1]} is not allowed in the sandbox")
    if event == "import":
        top = args[0].partition(".")[0]
        if top.startswith(_DENIED_MODULES) or top not in sys.stdlib_module_names:
            raise ImportError(f"import of {args[0]} is not allowed in the sandbox")
    if event == "open" and args[0] is not None and _is_proc_mem(args[0]):
        raise PermissionError(f"{args[0]}: not allowed in the sandbox")


def _program(libc, spec, layers, setup_fd, status_fd, nonce):
    _drop(libc, spec, layers)
    missing = [x for x in spec["required"] if x not in layers]
    os.write(setup_fd, ("L " + ",".join(layers) + "\n").encode())
    os.close(setup_fd)  # from here on nothing in the sandbox holds the setup pipe
    if missing:
        os._exit(3)  # fail closed: the runner names the missing layers
    os.set_inheritable(status_fd, False)
    with open("main.py", encoding="utf-8") as f:
        code = compile(f.read(), "main.py", "exec")
    sys.argv = ["main.py"]
    sys.addaudithook(_guard)
    try:
        exec(code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
    except SystemExit as e:  # as the interpreter exits: an exit is never a pass
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        _flush_and_exit(0 if code is None else code & 0xFF if isinstance(code, int) else 1)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        _flush_and_exit(1)
    _flush_and_exit(0, lambda: os.write(status_fd, b"P " + nonce + b"\n"))


def _flush_and_exit(code, then=None):
    """Flush the program's output, then ``then``, then exit: no atexit hooks or lingering
    threads of the program get a say afterwards."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if then is not None:
        then()
    os._exit(code)


def _die_like(code):
    """End by the signal that ``code`` (128 + signal, from init) stands for, so the runner sees
    a kill as a kill. SIGKILL cannot be reset (it is sent as is); a stop signal, or one whose
    default is to be ignored, leaves the plain exit code."""
    import signal

    sig = code - 128
    stops = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
    if not 0 < sig < signal.NSIG or sig in stops:
        return
    if sig != signal.SIGKILL:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            return
    os.kill(os.getpid(), sig)


def _wait_exit(pid):
    """Wait for ``pid`` and turn its status into this process's exit code (128 + signal)."""
    while True:
        got, status = os.waitpid(-1, 0)
        if got == pid:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _contain(libc, spec, nonce):
    """The outer process of one program (a fresh child of the zygote): never returns."""
    setup_fd, status_fd = spec["setup_fd"], spec["status_fd"]
    os.chdir(spec["workdir"])
    layers = []
    if os.geteuid() == 0:
        _join_cgroups(spec, layers)
        _unshare(libc, spec, layers)
    init = os.fork()
    if init:  # outer: nothing of the sandbox may reach the pipes through us
        os.close(setup_fd)
        os.close(status_fd)
        code = _wait_exit(init)
        _die_like(code)
        os._exit(code)
    if "mountns" in layers:
        try:
            _file_view(libc, spec, layers)
        except OSError as e:  # the layers that held are listed; the runner refuses the rest
            os.write(2, f"sandbox: {e}\n".encode())
    program = os.fork()
    if program == 0:
        _program(libc, spec, layers, setup_fd, status_fd, nonce)
    os.close(setup_fd)
    os.close(status_fd)
    os._exit(_wait_exit(program))


def _child(libc, sock, request, fds):
    """In the forked child: keep only stdio and the two pipes, then contain. Never returns."""
    try:
        out, err, setup_fd, status_fd = fds
        sock.close()
        os.setsid()  # its own session and process group: the deadline kills the group
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        keep = sorted({0, 1, 2, setup_fd, status_fd})
        for low, high in zip(keep, keep[1:] + [_max_fd()], strict=True):
            os.closerange(low + 1, high)
        os.environ.clear()
        os.environ.update(request["env"])
        spec = dict(request["spec"], setup_fd=setup_fd, status_fd=status_fd)
        _contain(libc, spec, request["nonce"].encode())
    except BaseException as e:
        try:
            os.write(2, f"sandbox: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(70)


def _max_fd():
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 < soft < 1 << 20 else 1 << 16


def _reap(pid, timeout_s):
    """Wait for ``pid`` up to ``timeout_s``, SIGKILL its group at the deadline or once it
    exited (the zombie keeps the group id ours until then), reap it: (returncode, timed out),
    the returncode as :class:`subprocess.Popen` gives it (``-signal`` when killed)."""
    import select
    import signal

    deadline = time.monotonic() + timeout_s
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # an old kernel or a sandboxing runtime: poll
        pidfd = None
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if pidfd is not None:
                if select.select([pidfd], [], [], left)[0]:
                    break
            elif os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                break
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)
    # (a readable pidfd, or the polled waitid, means it is a zombie now: its group id holds)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), timed_out


def serve(sock_fd):
    """The zygote's loop: one request at a time until the runner closes the socket."""
    import json
    import socket

    libc = _libc()
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except (ConnectionError, OSError):
            return
        if not msg:
            return
        request = json.loads(msg)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(libc, sock, request, fds)
        for fd in fds:
            os.close(fd)
        code, timed_out = _reap(pid, request["timeout_s"])
        sock.send(json.dumps({"returncode": code, "timed_out": timed_out,
                              "duration_s": time.monotonic() - start}).encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]))
