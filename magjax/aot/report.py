"""The plan's verdict from XLA's per-chip allocations: per role, colocated, as text or JSON.

A role's peak is the largest of its functions' peaks (arguments + outputs not written in
place + temporaries + code). Colocated, every chip holds both roles' resident state at once
(the trainer's state and batch, the sampler's weights, unless it reads the trainer's, and
slots) plus the temporaries of
whichever function runs, the larger of the two roles': that total must fit too. Headroom
is the fraction of HBM left.
"""

from __future__ import annotations

import dataclasses
import json

from magjax.aot import kv_pool
from magjax.aot.compile import FunctionMemory

GIB = 1 << 30
ROLES = {"trainer": ("init_state", "train_step"), "sampler": ("publish", "prefill", "decode")}
RESIDENT = {"trainer": "train_step", "sampler": "decode"}  # whose arguments are the role's resident state


@dataclasses.dataclass
class Verdict:
    peak_bytes: int
    hbm_bytes: int

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hbm_bytes

    @property
    def headroom(self) -> float:
        return 1.0 - self.peak_bytes / self.hbm_bytes

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "hbm_bytes": self.hbm_bytes, "fits": self.fits,
                "headroom": self.headroom}


@dataclasses.dataclass
class Report:
    model: str
    params: int
    slice: str
    topology: str
    chips: int
    hosts: int
    hbm_bytes: int
    hbm_source: str  # "XLA" (what the compiler reports for the chip) or "nominal"
    trainer_mesh: dict
    sampler_mesh: dict
    placement: str  # colocated | disaggregated
    functions: list[FunctionMemory]
    trainer_state_bytes: int  # logical per-chip sizes (no padding), for the breakdown
    batch_bytes: int
    sampler_weights_bytes: int
    kv_cache_bytes: int
    microbatches: int
    tokens_per_step: int  # one train step (one minibatch), all chips
    model_flops_per_step: float  # in that step's matmuls and attention, all chips
    notes: list[str] = dataclasses.field(default_factory=list)  # what the figures reveal beyond fit
    # The sampler's KV cache per generator chip: bytes, and the sequences it holds at the
    # average and at max_len against those in flight (kv_pool.report).
    kv_cache: dict | None = None
    # The trainer's parameters the sampler reads in place (colocated on one mesh): in the decode's
    # arguments, but held once, as the trainer's state.
    shared_weights_bytes: int = 0

    def function(self, name: str) -> FunctionMemory:
        return next(f for f in self.functions if f.function == name)

    def role(self, role: str) -> Verdict:
        return Verdict(max(self.function(f).peak_bytes for f in ROLES[role]), self.hbm_bytes)

    def resident_bytes(self, role: str) -> int:
        f = self.function(RESIDENT[role])
        if f.compiled:
            return f.argument_bytes
        if role == "trainer":
            return self.trainer_state_bytes + self.batch_bytes
        return self.sampler_weights_bytes + self.kv_cache_bytes

    def transient_bytes(self) -> int:
        """The most any one function needs beyond its role's resident state."""
        out = 0
        for role, names in ROLES.items():
            for name in names:
                out = max(out, self.function(name).peak_bytes - self.resident_bytes(role))
        return out

    def colocated(self) -> Verdict | None:
        if self.placement != "colocated":
            return None
        # Weights the sampler reads in place are in both roles' arguments, on the chip once.
        return Verdict(self.resident_bytes("trainer") + self.resident_bytes("sampler") - self.shared_weights_bytes
                       + self.transient_bytes(), self.hbm_bytes)

    @property
    def fits(self) -> bool:
        verdicts = [self.role(r) for r in ROLES] + [self.colocated()]
        # A KV cache that cannot hold the sequences the run keeps in flight does not fit either.
        holds = self.kv_cache is None or self.kv_cache["holds_in_flight"]
        return all(v.fits for v in verdicts if v is not None) and all(f.error is None for f in self.functions) and holds

    @property
    def compile_s(self) -> float:
        return sum(f.compile_s for f in self.functions)

    @property
    def compile_cpu_s(self) -> float:
        return sum(f.compile_cpu_s for f in self.functions)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["functions"] = [dataclasses.asdict(f) | {"peak_bytes": f.peak_bytes, "compiled": f.compiled,
                                                     "fits": f.peak_bytes <= self.hbm_bytes,
                                                     "headroom": 1.0 - f.peak_bytes / self.hbm_bytes}
                            for f in self.functions]
        out["roles"] = {r: self.role(r).to_dict() for r in ROLES}
        colocated = self.colocated()
        out["colocated"] = None if colocated is None else colocated.to_dict() | {
            "trainer_resident_bytes": self.resident_bytes("trainer"),
            "sampler_resident_bytes": self.resident_bytes("sampler"),
            "transient_bytes": self.transient_bytes(), "shared_weights_bytes": self.shared_weights_bytes}
        out["fits"], out["compile_s"], out["compile_cpu_s"], out["estimate"] = (self.fits, self.compile_s,
                                                                             self.compile_cpu_s, False)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        fields = {f.name for f in dataclasses.fields(cls)}
        func_fields = {f.name for f in dataclasses.fields(FunctionMemory)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["functions"] = [FunctionMemory(**{k: v for k, v in f.items() if k in func_fields}) for f in d["functions"]]
        return cls(**kw)

    def write_json(self, path: str):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    # ------------------------------------------------------------------ text

    def describe(self) -> str:
        # One unit for the whole text: GiB, or MiB when every figure is under 1 GiB.
        unit, scale = ("GiB", GIB) if max(f.peak_bytes for f in self.functions) >= GIB else ("MiB", 1 << 20)
        g = lambda b: f"{b / scale:.2f}"  # noqa: E731
        mesh = lambda m: " x ".join(f"{k} {v}" for k, v in m.items())  # noqa: E731
        lines = [
            f"{self.model}: {self.params:,} parameters on {self.slice} ({self.topology}, {self.chips} chips on "
            f"{self.hosts} host(s)), HBM {self.hbm_bytes / GIB:.2f} GiB per chip ({self.hbm_source})",
            f"  trainer mesh {mesh(self.trainer_mesh)}; sampler mesh {mesh(self.sampler_mesh)}; {self.placement}",
            f"per chip, {unit}, as XLA allocates (compiled ahead of time for the slice):",
            f"  {'role':<8}{'function':<12}{'arguments':>10}{'outputs':>9}{'aliased':>9}{'temps':>9}{'code':>7}"
            f"{'peak':>9}{'compile':>9}  shape",
        ]
        for f in self.functions:
            if f.compiled:
                cells = (f"{g(f.argument_bytes):>10}{g(f.output_bytes):>9}{g(f.alias_bytes):>9}"
                         f"{g(f.temp_bytes):>9}{g(f.code_bytes):>7}{g(f.peak_bytes):>9}")
            elif f.needed_kind == "temporaries":
                text = f"does not fit: needs {g(f.peak_bytes)} {unit} (temporaries {g(f.needed_bytes)})"
                cells = f"{g(f.argument_bytes):>10}  {text:<51}"
            elif f.needed_bytes is not None:
                cells = f"{'':>10}  {'does not fit: needs ' + g(f.needed_bytes) + ' ' + unit:<51}"
            else:
                cells = f"{'':>10}  {'did not compile (below)':<51}"
            lines.append(f"  {f.role:<8}{f.function:<12}{cells}{f.compile_s:>8.1f}s  {f.shape}")
            if f.error:
                lines.append(f"      {f.error}")
        lines.append("verdict:")
        for r in ROLES:
            lines.append(self._verdict_line(r, self.role(r)))
        colocated = self.colocated()
        if colocated is not None:
            shared = (f" - the trainer's weights it reads {g(self.shared_weights_bytes)}"
                      if self.shared_weights_bytes else "")
            lines.append(f"  colocated: trainer state + batch {g(self.resident_bytes('trainer'))} + sampler weights + "
                         f"KV cache {g(self.resident_bytes('sampler'))}{shared} + larger temporaries "
                         f"{g(self.transient_bytes())} {unit}")
            lines.append(self._verdict_line("together", colocated))
        reads = " (it reads the trainer's)" if self.shared_weights_bytes else ""
        lines.append(f"  breakdown (logical): trainer state {g(self.trainer_state_bytes)}, batch "
                     f"{g(self.batch_bytes)}, sampler weights {g(self.sampler_weights_bytes)}{reads}, KV cache and "
                     f"slots {g(self.kv_cache_bytes)} {unit}")
        if self.kv_cache is not None:
            lines += kv_pool.describe(self.kv_cache, lambda b: f"{g(b)} {unit}")
        lines.append(f"model FLOPs per train step: {self.model_flops_per_step:.3e} ({self.tokens_per_step:,} tokens, "
                     f"{self.microbatches} microbatches)")
        lines.append(f"compile time: {self.compile_s:.1f} s ({self.compile_cpu_s:.1f} s of CPU)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    @staticmethod
    def _verdict_line(name: str, v: Verdict) -> str:
        word = "fits" if v.fits else "DOES NOT FIT"
        return (f"  {name:<10}peak {v.peak_bytes / GIB:8.2f} of {v.hbm_bytes / GIB:.2f} GiB: {word}, "
                f"headroom {100 * v.headroom:.1f}%")
