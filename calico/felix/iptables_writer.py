"""Making one table (IPv4 or IPv6; filter, or nat) hold Felix's layout, in one commit.

See docs/dataplane.md, "Writing: library or restore".

A writer owns one table of one iptables backend (``backend_check``: legacy
or nft, the ``IptablesBackend`` setting): the filter table with its
``INPUT``/``FORWARD`` jumps (``iptables_layout``), or the nat table with a
``POSTROUTING`` jump (``nat``).  A table whose jumps are ``optional`` loses
a jump (and then its chain) when the layout no longer has the chain, and
is not even read while the kernel has no such legacy table in the namespace
(reading a legacy table creates it; ``iptables-nft-save`` creates nothing),
so a setting that is off leaves no trace.

Three steps per pass:

1. *Know the kernel.*  The first pass (and any pass after ``forget``) reads
   the table with ``iptables-legacy-save`` or ``iptables-nft-save`` (one C
   dump: about 0.2 s for 23,000 rules, where python-iptables needs seconds
   to decode as many).  Later passes trust what the last commit wrote.
2. *Plan* (pure): compare each Felix chain with the layout.  A chain that
   differs by a few rules is edited in place (deletes and inserts found by a
   sequence diff, so a 1,000-rule dispatch chain gains one endpoint with one
   insert); one that differs a lot is rewritten; Felix chains no longer in
   the layout are flushed and deleted; the INPUT and FORWARD jumps are made
   to be present exactly once, first.  Nothing that does not start with
   ``felix-`` is touched apart from those two jump rules.  An empty plan
   writes nothing.
3. *Commit* the plan as one atomic table replacement, by one of two means:
   - python-iptables (libiptc, so legacy only), autocommit off, one commit,
     building rule objects only for inserted or rewritten rules; used when
     the plan builds at most ``library_max_rules`` rules;
   - ``iptables-legacy-restore --noflush`` or ``iptables-nft-restore
     --noflush`` (one nf_tables transaction) with input naming only Felix's
     chains, for bulk changes (a cold start), and for every change with nft.
     python-iptables costs about 0.45 ms per rule (0.25 ms to build, 0.2 ms
     in its append checks): 9.6 s for the 21,000 rules of 1,000 endpoints,
     where restore takes 0.35 s.
   Both run the same plan, so they leave the same kernel state.  In restore
   input a jump in a built-in chain is deleted by its text, not its
   position, so a rule someone else inserted there since Felix last looked
   cannot be hit (the commit fails instead, and the next pass reads again).

The plan compares rule text with what the save command prints, so the
layout is written in the form both backends print (checked for every rule
form Felix writes, iptables 1.8.9: legacy and nft print them alike); the
one spelling the kernel changes, a protocol given by number that iptables
or /etc/protocols names (``-p 50`` reads back as ``-p esp``, ``-p 4`` as
``-p ipencap``), is read back as the number (``normalise_protocols``).

libiptc commits the whole table, so a concurrent writer could be lost; the
xtables lock (the one iptables itself takes) is held from read to commit in
the python-iptables path, and ``iptables-legacy-restore --wait`` takes it
itself.  iptables-nft-restore takes no lock: its commit is one nf_tables
transaction, which the kernel applies whole or not at all.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from calico.common.rules import PROTOCOL_NUMBERS
from calico.common.iptables_backends import BACKENDS, LEGACY, NFT, tool
from calico.felix.iptables_layout import TOP_JUMPS, is_felix_chain, top_jump_rule
from calico.felix.kernel_writes import WriteCounter
from calico.felix.tools import Runner, run_tool

log = logging.getLogger(__name__)

XTABLES_LOCK = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
LIBRARY, RESTORE, AUTO = "library", "restore", "auto"
_PROTOCOL_NUMBERS = {**PROTOCOL_NUMBERS, "ipv6-icmp": 58}


@dataclass
class KernelTable:
    """The part of a table Felix cares about."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # felix- chains only
    builtins: dict[str, list[str]] = field(default_factory=dict)  # the built-in chains holding Felix's jumps


@dataclass(frozen=True)
class Edit:
    op: str  # "I" insert or "D" delete
    chain: str
    index: int  # 0-based position when this edit runs
    rule: str | None = None  # inserted; for a delete in a built-in chain, the rule deleted


@dataclass
class TablePlan:
    new_chains: list[str] = field(default_factory=list)
    rewrites: dict[str, tuple[str, ...]] = field(default_factory=dict)  # new chains included
    edits: list[Edit] = field(default_factory=list)
    dead_chains: list[str] = field(default_factory=list)
    after: KernelTable = field(default_factory=KernelTable)

    def is_empty(self) -> bool:
        return not (self.rewrites or self.edits or self.dead_chains)

    def rules_to_build(self) -> int:
        return sum(len(r) for r in self.rewrites.values()) + sum(e.op == "I" for e in self.edits)

    def summary(self) -> str:
        return (f"{len(self.new_chains)} new, {len(self.rewrites) - len(self.new_chains)} rewritten, "
                f"{len(self.edits)} rule edits, {len(self.dead_chains)} deleted chains")


# Protocols Felix writes by name (iptables prints them so too).  Any other
# Felix writes by number, and iptables prints some of those by a name of
# its own (50 esp, 51 ah, 135 mh) and the rest by their /etc/protocols name
# when the machine has that file (``-p 4`` reads back as ``-p ipencap``, or
# as ``-p 4`` in an image without netbase); those names are read back as
# numbers, so both spellings compare equal.
_IPTABLES_PROTOCOLS = {"tcp", "udp", "udplite", "icmp", "ipv6-icmp", "icmpv6", "sctp", "all"}
_IPTABLES_NUMBERED = {"esp": 50, "ah": 51, "mh": 135, "ipv6-mh": 135}
_PROTOCOL_WORD_RE = re.compile(r"(?<!\S)(-p (?:! )?)([A-Za-z][A-Za-z0-9._-]*)(?!\S)")


def _etc_protocols(path: str = "/etc/protocols") -> dict[str, int]:
    numbers: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and re.fullmatch(r"[0-9]{1,3}", words[1]):
                    for name in [words[0], *words[2:]]:
                        numbers.setdefault(name, int(words[1]))
    except OSError:
        pass
    return numbers


def normalise_protocols(rule: str, numbers: Mapping[str, int]) -> str:
    """``-p NAME`` as ``-p NUMBER`` for every name but those Felix writes."""
    def number(match: re.Match) -> str:
        name = match.group(2)
        if name.lower() in _IPTABLES_PROTOCOLS:
            return match.group(0)
        value = _IPTABLES_NUMBERED.get(name.lower(), numbers.get(name))
        return match.group(0) if value is None else f"{match.group(1)}{value}"
    return _PROTOCOL_WORD_RE.sub(number, rule)


def parse_save(text: str, table_name: str = "filter", top_jumps: Mapping[str, str] = TOP_JUMPS,
               protocols: Mapping[str, int] | None = None) -> KernelTable:
    """Felix's chains and the rules of the built-in chains holding its jumps,
    from iptables-save output."""
    table = KernelTable()
    numbers = _etc_protocols() if protocols is None else protocols
    in_table = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_table = line == f"*{table_name}"
        elif not in_table:
            continue
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if is_felix_chain(name):
                table.chains[name] = []
            elif name in top_jumps:
                table.builtins[name] = []
        elif line.startswith("-A "):
            _, name, rule = line.split(" ", 2)
            target = table.chains if is_felix_chain(name) else table.builtins if name in top_jumps else None
            if target is not None:
                target[name].append(normalise_protocols(rule, numbers) if "-p " in rule else rule)
    return table


def _chain_edits(name: str, have: list[str], want: tuple[str, ...]) -> list[Edit]:
    """Deletes and inserts turning ``have`` into ``want``, last position first
    so that every index is still valid when its edit runs."""
    edits: list[Edit] = []
    matcher = difflib.SequenceMatcher(None, have, want, autojunk=False)
    for tag, i1, i2, j1, j2 in reversed(matcher.get_opcodes()):
        if tag in ("delete", "replace"):
            edits.extend(Edit("D", name, i) for i in range(i2 - 1, i1 - 1, -1))
        if tag in ("insert", "replace"):
            edits.extend(Edit("I", name, i1 + k, rule) for k, rule in enumerate(want[j1:j2]))
    return edits


def plan_table(kernel: KernelTable, desired: Mapping[str, tuple[str, ...]],
               top_jumps: Mapping[str, str] = TOP_JUMPS, optional_jumps: bool = False) -> TablePlan:
    """What to change so the table holds ``desired`` (pure).

    Each of ``top_jumps`` (built-in chain -> Felix chain) ends up first and
    once in its built-in chain; with ``optional_jumps``, only while the
    Felix chain is in ``desired``, and removed otherwise."""
    plan = TablePlan()
    for name in sorted(desired):
        want = tuple(desired[name])
        have = kernel.chains.get(name)
        if have is None:
            plan.new_chains.append(name)
            plan.rewrites[name] = want
        elif tuple(have) != want:
            edits = _chain_edits(name, have, want)
            if len(edits) >= len(want):
                plan.rewrites[name] = want
            else:
                plan.edits.extend(edits)
    plan.dead_chains = sorted(name for name in kernel.chains if name not in desired)
    builtins = {name: list(rules) for name, rules in kernel.builtins.items()}
    for builtin, target in top_jumps.items():
        rules = builtins.setdefault(builtin, [])
        jump = top_jump_rule(target)
        positions = [i for i, rule in enumerate(rules) if rule == jump]
        if optional_jumps and target not in desired:
            for i in reversed(positions):
                plan.edits.append(Edit("D", builtin, i, jump))
                del rules[i]
        elif positions != [0]:
            for i in reversed(positions):
                plan.edits.append(Edit("D", builtin, i, jump))
                del rules[i]
            plan.edits.append(Edit("I", builtin, 0, jump))
            rules.insert(0, jump)
    plan.after = KernelTable({name: list(rules) for name, rules in desired.items()}, builtins)
    return plan


@contextlib.contextmanager
def xtables_lock(timeout: float = 10.0, path: str = XTABLES_LOCK) -> Iterator[None]:
    """Hold the lock every iptables command takes, so no commit is lost."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"xtables lock {path} held for over {timeout:.0f}s") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


_TABLE_NAMES = {4: "/proc/thread-self/net/ip_tables_names", 6: "/proc/thread-self/net/ip6_tables_names"}


def table_exists(version: int, table: str) -> bool:
    """True if the namespace of the calling thread has this legacy table."""
    try:
        with open(_TABLE_NAMES[version], encoding="ascii") as handle:
            return table in handle.read().split()
    except OSError:
        return True  # cannot tell: read it


class IptablesWriter:
    """Keeps one family's table (filter by default) in line with the layout."""

    def __init__(self, version: int, counter: WriteCounter, mode: str = AUTO,
                 library_max_rules: int = 64, runner: Runner = subprocess.run, table: str = "filter",
                 top_jumps: Mapping[str, str] = TOP_JUMPS, optional_jumps: bool = False,
                 backend: str = LEGACY) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"iptables backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if mode not in (LIBRARY, RESTORE, AUTO):
            raise ValueError(f"iptables mode {mode!r} is not one of {LIBRARY}, {RESTORE}, {AUTO}")
        if backend == NFT and mode == LIBRARY:
            raise ValueError("python-iptables (libiptc) writes the legacy backend only: "
                             "the nft backend is written with iptables-nft-restore")
        self.version = version
        self.counter = counter
        self.backend = backend
        self.mode = RESTORE if backend == NFT else mode
        self.library_max_rules = library_max_rules
        self.runner = runner
        self.table = table
        self.top_jumps = dict(top_jumps)
        self.optional_jumps = optional_jumps
        self.kernel: KernelTable | None = None

    def forget(self) -> None:
        self.kernel = None

    def read(self) -> KernelTable:
        if self.kernel is None:
            if (self.optional_jumps and self.backend == LEGACY and self.runner is subprocess.run
                    and not table_exists(self.version, self.table)):
                self.kernel = KernelTable()  # nothing of ours can be there; reading would create the table
            else:
                self.kernel = parse_save(run_tool([tool(self.backend, self.version, "-save"), "-t", self.table],
                                                  runner=self.runner), self.table, self.top_jumps)
        return self.kernel

    def sync(self, desired: Mapping[str, tuple[str, ...]]) -> TablePlan:
        """Make Felix's chains exactly ``desired`` (deleting other felix- chains)."""
        plan = plan_table(self.read(), desired, self.top_jumps, self.optional_jumps)
        self._commit(plan)
        return plan

    def ensure_present(self, static: Mapping[str, tuple[str, ...]], force: Iterable[str] = ()) -> TablePlan:
        """Create the chains in ``static`` that are missing and the top jumps,
        leaving every existing Felix chain as it is (start-up, before the
        first full pass knows what endpoints exist), except the chains named
        in ``force``, which are made to hold exactly what ``static`` says."""
        kernel = self.read()
        forced = set(force)
        desired = {name: tuple(rules) for name, rules in kernel.chains.items()}
        for name, rules in static.items():
            if name in forced:
                desired[name] = tuple(rules)
            else:
                desired.setdefault(name, tuple(rules))
        plan = plan_table(kernel, desired, self.top_jumps, self.optional_jumps)
        self._commit(plan)
        return plan

    def _commit(self, plan: TablePlan) -> None:
        if plan.is_empty():
            return
        use_library = self.mode == LIBRARY or (
            self.mode == AUTO and plan.rules_to_build() <= self.library_max_rules)
        started = time.perf_counter()
        try:
            if use_library:
                LibraryCommit(self.version, self.table).run(plan)
            else:
                self._restore(plan)
        except Exception:
            self.kernel = None  # we no longer know what the kernel holds
            raise
        self.counter.iptables_commits += 1
        self.kernel = plan.after
        log.info("IPv%d %s table (%s): %s via %s in %.0f ms", self.version, self.table, self.backend,
                 plan.summary(), "python-iptables" if use_library else tool(self.backend, self.version, "-restore"),
                 (time.perf_counter() - started) * 1000)

    def _restore(self, plan: TablePlan) -> None:
        run_tool([tool(self.backend, self.version, "-restore"), "--noflush", "--wait", "10"],
                 stdin=restore_input(plan, self.table), runner=self.runner)


def restore_input(plan: TablePlan, table: str = "filter") -> str:
    """The plan as ``iptables-restore --noflush`` input (one commit)."""
    lines = [f"*{table}"]
    lines += [f":{name} - [0:0]" for name in plan.rewrites]  # creates or flushes
    for name, rules in plan.rewrites.items():
        lines += [f"-A {name} {rule}" for rule in rules]
    for edit in plan.edits:
        if edit.op == "D":  # a built-in chain's rule by its text: see the module docstring
            lines.append(f"-D {edit.chain} {edit.rule}" if edit.rule is not None and not is_felix_chain(edit.chain)
                         else f"-D {edit.chain} {edit.index + 1}")
        else:
            lines.append(f"-I {edit.chain} {edit.index + 1} {edit.rule}")
    lines += [f"-F {name}" for name in plan.dead_chains]
    lines += [f"-X {name}" for name in plan.dead_chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class LibraryCommit:
    """One plan through python-iptables: edit the table handle, commit once."""

    def __init__(self, version: int, table: str = "filter") -> None:
        import iptc  # imported here: loading libiptc is only needed on this path

        self.iptc = iptc
        self.version = version
        self.table_name = table
        self.table_class = iptc.Table if version == 4 else iptc.Table6
        self.rule_class = _filter_rule_class(iptc, version, table)

    def run(self, plan: TablePlan) -> None:
        with xtables_lock():
            table = self.table_class(self.table_name, autocommit=False)
            table.autocommit = False
            # A fresh handle, read from the kernel now and in this thread's
            # network namespace (libiptc binds its socket at init); it also
            # drops whatever a failed earlier pass left uncommitted.
            table.refresh()
            self._apply(table, plan)
            table.commit()

    def _apply(self, table, plan: TablePlan) -> None:
        iptc = self.iptc
        for name in plan.new_chains:
            table.create_chain(name)
        for name, rules in plan.rewrites.items():
            if name not in plan.new_chains:
                table.flush_entries(name)
            chain = iptc.Chain(table, name)
            for rule in rules:
                chain.append_rule(self.build(rule))
        for edit in plan.edits:
            if edit.op == "D":
                if table._iptc.iptc_delete_num_entry(edit.chain.encode(), edit.index, table._handle) != 1:
                    raise iptc.IPTCError(f"can't delete rule {edit.index + 1} of {edit.chain}: {table.strerror()}")
            else:
                iptc.Chain(table, edit.chain).insert_rule(self.build(edit.rule), edit.index)
        for name in plan.dead_chains:
            table.flush_entries(name)
        for name in plan.dead_chains:
            table.delete_chain(name)

    def build(self, text: str):
        """A python-iptables rule from its iptables-save text (Felix's vocabulary:
        addresses, interfaces, protocol, -m matches with options, -j/-g)."""
        iptc = self.iptc
        rule = self.rule_class()
        words = text.split()
        match = None
        negate = False
        i = 0
        while i < len(words):
            word = words[i]
            if word == "!":
                negate = True
                i += 1
                continue
            if word in ("-s", "-d", "-i", "-o", "-p"):
                attr = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface",
                        "-p": "protocol"}[word]
                value = words[i + 1]
                if word == "-p":  # python-iptables knows few protocol names
                    value = str(_PROTOCOL_NUMBERS.get(value, value))
                setattr(rule, attr, ("!" if negate else "") + value)
                i += 2
            elif word == "-m":
                match = rule.create_match(words[i + 1])
                i += 2
            elif word in ("-j", "-g"):
                rule.target = iptc.Target(rule, words[i + 1], goto=(word == "-g"))
                i += 2
            elif word.startswith("--") and match is not None:
                j = i + 1
                while j < len(words) and not words[j].startswith("-") and words[j] != "!":
                    j += 1
                match.parse(word[2:], (["!"] if negate else []) + words[i + 1:j])
                i = j
            else:
                raise ValueError(f"cannot build rule {text!r}: unexpected {word!r}")
            negate = False
        return rule


def _filter_rule_class(iptc, version: int, table: str = "filter"):
    """python-iptables' Rule, with two of its habits corrected.

    - It resolves a jump target by asking *every* table whether it has such
      a chain, which instantiates nat, mangle, raw and security in the
      namespace as a side effect; a rule here only jumps within its table.
    - For IPv6 (ip6tc.py: the same code in 1.0.1, Debian bookworm's, and
      1.2.0) it writes interface masks as 0x01 bytes instead of 0xff, so
      the kernel compares only the lowest bit of each character: ``-o
      tap+`` then also matches ``fab0``.  iptables-save prints such a rule
      exactly like a correct one, so only packets show the difference
      (test_felix_dataplane checks them).  The correction rewrites as many
      bytes as the library set (the mask's non-NUL prefix) to 0xff, so it
      is a no-op on a version that writes 0xff itself."""
    base = iptc.Rule if version == 4 else iptc.Rule6
    table_class = iptc.Table if version == 4 else iptc.Table6

    class FilterRule(base):  # type: ignore[misc, valid-type]
        @property
        def tables(self):
            return [table_class(table)]

    if version == 6:
        def set_in_interface(self, name: str) -> None:
            base.set_in_interface(self, name)
            # c_char array: reads back up to the first NUL, i.e. the masked bytes
            self.entry.ipv6.iniface_mask = b"\xff" * len(self.entry.ipv6.iniface_mask)

        def set_out_interface(self, name: str) -> None:
            base.set_out_interface(self, name)
            self.entry.ipv6.outiface_mask = b"\xff" * len(self.entry.ipv6.outiface_mask)

        FilterRule.in_interface = property(base.get_in_interface, set_in_interface)
        FilterRule.out_interface = property(base.get_out_interface, set_out_interface)

    return FilterRule
