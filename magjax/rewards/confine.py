"""The sandbox's launcher: confine this process, then ``exec`` the untrusted program.

``sandbox.run`` starts it by path as ``python -I -S confine.py LIMITS -- ARGV``: no site
packages, no magjax import, nothing but ``os`` and ``resource``, because it runs once per
test case and its start-up is most of a short test's cost (8 ms here against 33 ms for
``-m magjax.rewards.sandbox``). The read-only remount uses the ``mount(2)`` system call
directly rather than four ``mount`` processes.

Order matters: join the run's pids cgroup first (every descendant is then counted), make
the filesystem read-only except the run's directory (only inside the private mount
namespace), set the rlimits, exec.
"""

import ctypes
import os
import resource
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384


def _mount(libc, source: str, target: str, flags: int):
    if libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target} (flags {flags:#x}): {os.strerror(errno)}")


def read_only_except(writable: str):
    """Everything read-only but ``writable`` (call inside a private mount namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, "/", "/", MS_BIND | MS_REC)
    _mount(libc, "/", "/", MS_REMOUNT | MS_BIND | MS_RDONLY)
    _mount(libc, writable, writable, MS_BIND)
    _mount(libc, writable, writable, MS_REMOUNT | MS_BIND)
    os.chdir(writable)  # re-enter through the writable mount


def main(args: list[str]):
    memory_mb, cpu_s, file_bytes, nproc, nofile = (int(a) for a in args[:5])
    argv = args[args.index("--") + 1:]
    cgroup = os.environ.pop("MAGJAX_SANDBOX_CGROUP", None)
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    writable = os.environ.pop("MAGJAX_SANDBOX_WRITABLE", None)
    if writable:
        read_only_except(writable)
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
