"""Static allow-list and deny-list of client networks (CIDRs, IPv4 and IPv6).

- A client on the **deny-list** gets 403 (``{"error": "blocked", "scope":
  "deny_list"}``) before anything else looks at the request.
- A client on the **allow-list** is never blocked by a decision nor
  rate-limited by the gateway (DESIGN.md: "Allow-lists always win over
  decisions"); it still needs valid credentials.
- An address on both lists: the most specific network wins (longest prefix,
  as in routing tables); on a tie the allow-list wins. So ``allow
  10.0.0.0/8`` + ``deny 10.6.6.6/32`` denies that one host only.

Matching uses :class:`CidrSet`: one hash-set lookup per distinct prefix
length present (at most 33 for IPv4, 129 for IPv6), whatever the number of
networks — the same technique as the decision store's prefix scope.

The client address is the one :mod:`inline.routes` resolved (socket peer,
or the forwarded address through trusted proxies, see
:mod:`inline.client_identity`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http

from gatewatch.settings import load_settings
from inline import flowtags
from inline.flowstate import answered, get_facts, json_answer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an address (IPv4-mapped IPv6 folded to IPv4), or None if it is not one."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_cidrs(items: Iterable[str], what: str = "CIDR") -> list[IPNetwork]:
    """Parse networks such as ``"10.0.0.0/8"``, ``"2001:db8::/32"`` or a bare address
    (a /32 or /128). Host bits are cleared (``10.1.2.3/8`` → ``10.0.0.0/8``).

    Raises ``ValueError`` naming ``what`` and the bad item.
    """
    nets = []
    for item in items:
        item = item.strip()
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"{what} {item!r} is not an IPv4/IPv6 network: {exc}") from None
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None \
                and net.prefixlen >= 96:
            net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
        nets.append(net)
    return nets


class CidrSet:
    """A set of networks with longest-prefix lookup of an address.

    Storage: ``{version: {prefix length: set of network numbers}}`` where the
    network number is the address shifted right by the host bits. A lookup
    costs one shift and one set probe per distinct prefix length of that IP
    version (O(1) in the number of networks).
    """

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self._by_len: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        self._lens: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        self._size = 0
        for net in networks:
            self.add(net)

    def __len__(self) -> int:
        return self._size

    def add(self, net: IPNetwork) -> None:
        """Add one network."""
        bits = net.max_prefixlen
        numbers = self._by_len[net.version].setdefault(net.prefixlen, set())
        number = int(net.network_address) >> (bits - net.prefixlen)
        if number not in numbers:
            numbers.add(number)
            self._size += 1
        self._lens[net.version] = tuple(sorted(self._by_len[net.version], reverse=True))

    def longest_match(self, addr: IPAddress) -> int | None:
        """Prefix length of the most specific network containing ``addr``, or None."""
        by_len = self._by_len[addr.version]
        bits = 32 if addr.version == 4 else 128
        value = int(addr)
        for plen in self._lens[addr.version]:
            if (value >> (bits - plen)) in by_len[plen]:
                return plen
        return None

    def __contains__(self, addr: IPAddress) -> bool:
        return self.longest_match(addr) is not None


@dataclass(frozen=True)
class ListsSpec:
    """Parsed allow- and deny-lists."""

    allow: CidrSet
    deny: CidrSet


def classify(addr_text: str, spec: ListsSpec) -> str | None:
    """``"allow"``, ``"deny"`` or None for the client address ``addr_text``.

    Longest prefix wins between the lists; a tie goes to ``"allow"``. Text
    that is not an address is on no list.
    """
    if not len(spec.allow) and not len(spec.deny):
        return None
    addr = parse_address(addr_text)
    if addr is None:
        return None
    allow, deny = spec.allow.longest_match(addr), spec.deny.longest_match(addr)
    if allow is None and deny is None:
        return None
    if deny is None or (allow is not None and allow >= deny):
        return "allow"
    return "deny"


class Lists:
    """Addon: 403 for deny-listed clients; marks allow-listed ones (see module docstring).

    Options: ``gatewatch_allow_list``, ``gatewatch_deny_list`` (CIDRs). Must
    come after :class:`inline.routes.Routes` and before enforcement and rate
    limiting. ``denied`` counts 403 answers.
    """

    def __init__(self) -> None:
        self.spec = ListsSpec(CidrSet(), CidrSet())
        self.denied = 0

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_allow_list", Sequence[str], list(s.allow_list),
                          "Client networks (CIDR) never blocked nor rate-limited by the gateway.")
        loader.add_option("gatewatch_deny_list", Sequence[str], list(s.deny_list),
                          "Client networks (CIDR) always answered 403.")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"gatewatch_allow_list", "gatewatch_deny_list"}:
            return
        try:
            allow = CidrSet(parse_cidrs(ctx.options.gatewatch_allow_list, "allow-list entry"))
            deny = CidrSet(parse_cidrs(ctx.options.gatewatch_deny_list, "deny-list entry"))
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from exc
        self.spec = ListsSpec(allow, deny)

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or answered(flow):
            return
        verdict = classify(facts.client_ip, self.spec)
        if verdict == "allow":
            flowtags.mark_allow_listed(flow)
        elif verdict == "deny":
            self.denied += 1
            flowtags.mark_blocked(flow, "deny_list")
            json_answer(flow, 403, {"error": "blocked", "scope": "deny_list"}, "decision")
