"""UDP sockets for the workers: SO_REUSEPORT so every worker owns a socket on the shared SIP address."""
import socket
import struct


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_socket(host, port, *, reuseport=True, rcvbuf=0, sndbuf=0, recv_timeout=0.0):
    """Bind a UDP socket. Returns (socket, granted receive buffer in bytes).

    ``recv_timeout`` sets the kernel's SO_RCVTIMEO, so a blocking recvfrom() wakes up (BlockingIOError) at least
    that often without a poll() before every read."""
    fam = family_of(host)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if rcvbuf:
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)   # SO_RCVBUFFORCE (root may exceed rmem_max)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            try:
                s.setsockopt(socket.SOL_SOCKET, 32, sndbuf)   # SO_SNDBUFFORCE
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if recv_timeout:
            sec = int(recv_timeout)
            usec = int((recv_timeout - sec) * 1e6)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))
        s.bind((host, port))
    except BaseException:
        s.close()
        raise
    return s, s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def udp_rcvbuf_errors():
    """The kernel's UDP receive-buffer drop counter (RcvbufErrors in /proc/net/snmp), or None."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Udp:")]
        if len(lines) >= 2:
            names, values = lines[0], lines[1]
            return int(values[names.index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None
    return None
