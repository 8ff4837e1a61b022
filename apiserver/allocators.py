"""ClusterIP and NodePort allocation for Services.

The allocated sets are rebuilt from the stored Services at start and kept in
memory; the registry allocates before it writes and releases when the write
fails or the Service goes away. (One apiserver per store for now; a
multi-apiserver setup needs the bitmap in the store, as upstream keeps it.)
"""

from __future__ import annotations

import ipaddress


class AllocationError(ValueError):
    pass


class ClusterIPAllocator:
    def __init__(self, cidr: str) -> None:
        try:
            self.net = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as e:
            raise AllocationError(f"service CIDR {cidr!r} is not a valid IPv4 network: {e}") from e
        if self.net.num_addresses < 8:
            raise AllocationError(f"service CIDR {cidr} is too small")
        self._first = int(self.net.network_address) + 1
        self._last = int(self.net.broadcast_address) - 1
        self._used: set[int] = set()
        self._next = self._first

    @property
    def first(self) -> str:
        return str(ipaddress.IPv4Address(self._first))

    def in_range(self, ip: str) -> bool:
        try:
            n = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        return self._first <= n <= self._last

    def mark(self, ip: str) -> None:
        """Record an IP that is already in use (at start-up)."""
        if self.in_range(ip):
            self._used.add(int(ipaddress.IPv4Address(ip)))

    def allocate(self, ip: str = "") -> str:
        if ip:
            if not self.in_range(ip):
                raise AllocationError(
                    f"failed to allocate IP {ip}: provided IP is not in the valid range. "
                    f"The range of valid IPs is {self.net}")
            n = int(ipaddress.IPv4Address(ip))
            if n in self._used:
                raise AllocationError(f"failed to allocate IP {ip}: provided IP is already allocated")
            self._used.add(n)
            return ip
        size = self._last - self._first + 1
        if len(self._used) >= size:
            raise AllocationError(f"failed to allocate a serviceIP: range {self.net} is full")
        n = self._next
        while n in self._used:
            n = self._first if n >= self._last else n + 1
        self._used.add(n)
        self._next = self._first if n >= self._last else n + 1
        return str(ipaddress.IPv4Address(n))

    def release(self, ip: str) -> None:
        try:
            self._used.discard(int(ipaddress.IPv4Address(ip)))
        except ValueError:
            pass


class PortAllocator:
    def __init__(self, lo: int, hi: int) -> None:
        if not (0 < lo <= hi <= 65535):
            raise AllocationError(f"invalid port range {lo}-{hi}")
        self.lo, self.hi = lo, hi
        self._used: set[int] = set()
        self._next = lo

    def in_range(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def mark(self, port: int) -> None:
        if self.in_range(port):
            self._used.add(port)

    def allocate(self, port: int = 0) -> int:
        if port:
            if not self.in_range(port):
                raise AllocationError(f"provided port is not in the valid range. The range of valid ports is "
                                      f"{self.lo}-{self.hi}")
            if port in self._used:
                raise AllocationError("provided port is already allocated")
            self._used.add(port)
            return port
        if len(self._used) > self.hi - self.lo:
            raise AllocationError(f"range {self.lo}-{self.hi} is full")
        p = self._next
        while p in self._used:
            p = self.lo if p >= self.hi else p + 1
        self._used.add(p)
        self._next = self.lo if p >= self.hi else p + 1
        return p

    def release(self, port: int) -> None:
        self._used.discard(port)
