"""What determines one CPU convolution kernel (`ConvSpec`; x86 or aarch64), and its register tile.

Weights, bias and the per-channel rescale constants are kernel arguments, so one compiled kernel
serves every layer with the same `ConvSpec` (shapes, dtypes, clip bounds, variant and tile).
"""
from __future__ import annotations

from dataclasses import dataclass


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ConvGeometry:
    """The shape of a convolution (dense: 1x1 on 1x1); shared by the CPU and CUDA kernel specs."""

    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]   # top, left, bottom, right
    dil: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        t, l, b, r = self.pads
        oh = (self.h + t + b - (self.kh - 1) * self.dil[0] - 1) // self.stride[0] + 1
        ow = (self.w + l + r - (self.kw - 1) * self.dil[1] - 1) // self.stride[1] + 1
        return oh, ow


@dataclass(frozen=True)
class KernelIO(ConvGeometry):
    """What a conv kernel reads and writes, shared by the VNNI/AVX2/arm kernels and the AMX ones."""

    packed_in: bool
    in_dtype: str                     # uint8 | int8
    out_dtype: str
    lo: int
    hi: int
    residual: tuple | None = None     # (residual dtype, lo, hi, int32 form) of a fused qadd
    hi32: bool = False                # every shift >= 33: int32 requant (m, 2^(s-33), s-32 as int32)


@dataclass(frozen=True)
class ConvSpec(KernelIO):
    """Everything that determines one conv kernel (weights and rescale factors are arguments)."""

    isa: str = "vnni"                 # vnni | vnni16 | avx512 | avx2 (x86); sdot | usdot | usmmla (aarch64)
    tile: tuple[int, int, int] = (1, 1, 8)   # ocbi, ohi, owi
    depthwise: bool = False           # groups == C == O
    w4: bool = False                  # 4-bit weights, stored two per byte, unpacked per operand
    nhwc: bool = False                # input [N, H, W, C] and output [N, H, W, O16] (a linear's rows as W)
    post: tuple | None = None         # (M, S, lo, hi) of a per-tensor requant of the output, fused in
    gcb: int = 0                      # grouped conv: input blocks of 16 per super-group (0: dense)
    w16: bool = False                 # 9-16-bit weights stored as int16 (the int16 step only, `pmadd`)
    pre: int = 0                      # the int32 requant's left shift of acc + bias (`packing.hi32_preshift`)

    def __post_init__(self):
        if self.w16 and not (self.pmadd or (self.depthwise and self.isa in INT16_ISAS)):
            raise ValueError("int16 weights run on the int16 step only (a plain conv, dense or depthwise on an x86 isa)")
        if self.pre and not self.hi32:
            raise ValueError("a requant pre-shift belongs to the int32 form (hi32)")

    @property
    def w_dtype(self) -> str:
        """The weight operand's storage: int16 for `w16` (loaded as it is), else int8."""
        return "int16" if self.w16 else "int8"

    @property
    def dot(self) -> bool:
        """Whether the reductions run on a 4-way int8 dot-product instruction."""
        return self.isa in DOT_ISAS

    @property
    def pmadd(self) -> bool:
        """The int16 step for the plain conv / dense / `rowtaps` (`intrin_avx2`): AVX2 `vpmaddwd` (four
        instructions per 16 x 4 step) or, for 16-bit codes on AVX512-VNNI (`vnni16`), `vpdpwssd` (two),
        on weights sign-extended to int16 in the kernel; depthwise (and 4-bit weights, `lowering`) keep
        the fallback."""
        return self.isa in INT16_ISAS and not self.depthwise and not self.w4

    @property
    def mmla(self) -> bool:
        """i8mm `usmmla` for a channel-blocked conv (2 pixels x 8 channels x 2 output channels per
        instruction, `arm_intrin.MMLA_INTRIN`; the two pixels must be adjacent: width stride and
        dilation 1); the other variants on such a core use `usdot`."""
        return (self.isa == "usmmla" and not self.depthwise and not self.rowtaps and not self.gcb and self.cb % 8 == 0
                and self.stride[1] == 1 and self.dil[1] == 1 and self.out_hw[1] >= 2)

    @property
    def operand_dtype(self) -> str:
        """The activation operand's type: uint8 (`vpdpbusd`, `usdot`, and the x86 fallbacks), int8 (`sdot`),
        int16 (every `vpmaddwd` kernel: its packing copy widens 8-bit codes, or narrows 16-bit codes from int32
        storage, so the step broadcasts int16 pairs from memory, `intrin_avx2`)."""
        if self.pmadd or self.dw_pairs:
            return "int16"
        return "int8" if self.isa == "sdot" else "uint8"

    @property
    def cb(self) -> int:
        return 16 if self.packed_in or self.depthwise else (4 if self.c % 16 else 16)

    @property
    def ocb(self) -> int:
        return ceil_div(self.o, 16)

    @property
    def icb(self) -> int:
        return ceil_div(self.c, self.cb)

    @property
    def rcb(self) -> int:
        """Input blocks one output block reduces over: all of them, or its super-group's (`gcb`)."""
        return self.gcb or self.icb

    @property
    def dw_vnni(self) -> bool:
        """Depthwise with `vpdpbusd` over groups of 4 horizontal taps (needs width dilation 1)."""
        return self.depthwise and self.dot and self.dil[1] == 1

    @property
    def dw_pairs(self) -> bool:
        """Depthwise on 16-bit codes with `vpdpwssd` over pairs of horizontal taps (`intrin_avx2`;
        AVX512-VNNI, width dilation 1, int8 or int16 weights)."""
        return self.depthwise and self.isa == "vnni16" and self.dil[1] == 1 and not self.w4

    @property
    def dw_pmadd(self) -> bool:
        """Depthwise on AVX2 with one `vpmaddwd` per tap of 8 channels (`intrin_avx2.DW_PMADD_INTRIN`):
        the int32-lane form with the product on the multiply-add unit; 8- to 16-bit weights, any dilation."""
        return self.depthwise and self.isa == "avx2" and not self.w4

    @property
    def rowtaps(self) -> bool:
        """Few-channel NCHW input (a first layer): the 4 bytes of a `vpdpbusd` (or of a `vpmaddwd` step)
        are 4 horizontal taps of one input channel, contiguous in an NCHW row, so the input needs no
        channel blocking."""
        return (not self.packed_in and not self.depthwise and (self.dot or self.pmadd) and self.dil[1] == 1
                and self.kw > 1 and self.c < 16)

    @property
    def kwp(self) -> int:
        """Kernel width as computed: rounded up to whole groups of 4 taps for `dw_vnni`, `rowtaps`, of 2
        for `dw_pairs`."""
        return ceil_div(self.kw, self.taps) * self.taps

    @property
    def taps(self) -> int:
        """Horizontal taps per instruction operand (1 where the kernel is not tap-grouped)."""
        return 4 if self.dw_vnni or self.rowtaps else 2 if self.dw_pairs else 1

    @property
    def offset(self) -> int:
        """Added to every input byte so it fits the operand type: +128 for int8 input to an unsigned
        operand, -128 for uint8 input to `sdot`; the bias absorbs it (`packing.bias`)."""
        if (self.depthwise and not self.dw_vnni) or self.in_dtype == self.operand_dtype or self.operand_dtype == "int16":
            return 0
        return 128 if self.operand_dtype == "uint8" else -128

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the int8 weight operand array; with `w4` the kernel's argument is
        `weight_shape()[:-2] + (8 kg,)`: each 16 x kg operand in half the bytes (`packing.nibbles`)."""
        if self.rowtaps:  # (`vpmaddwd`: each 16 x 4 operand as [2 tap pairs, 16, 2], as below)
            op = (2, 16, 2) if self.pmadd else (16, 4)
            return (self.ocb, self.c, self.kh, self.kwp // 4, *op)
        if self.dw_vnni or self.dw_pairs:
            return (self.ocb, self.kh, self.kwp // self.taps, 16, self.taps)
        if self.depthwise:
            return (self.ocb, self.kh, self.kw, 16)
        kg = 8 if self.mmla else 4  # input channels per instruction operand row
        if self.pmadd:  # each 16 x 4 operand as [2 input pairs, 16 outputs, 2 inputs] (`packing`)
            return (self.ocb // self.tile[0], self.rcb, self.kh, self.kw, self.cb // 4, self.tile[0], 2, 16, 2)
        return (self.ocb // self.tile[0], self.rcb, self.kh, self.kw, self.cb // kg, self.tile[0], 16, kg)


DOT_ISAS = ("vnni", "sdot", "usdot", "usmmla")
INT16_ISAS = ("avx2", "vnni16")  # the int16-pair step of `intrin_avx2`: `vpmaddwd` / `vpdpwssd`
MAX_ACC = 15  # 15 x 64 B < 1 KiB: the accumulator tile is a stack array (see intrin.py), so registers
# vector register file per isa for `choose_tile`: (registers, per 16-lane int32 accumulator, per 16 x 4
# weight operand, per activation broadcast). AVX2: 16 ymm; an accumulator is 2 of them, a weight
# operand 4 (sign-extended to int16), the two int16 pair broadcasts of one pixel 2. vnni16: 32 zmm; an
# accumulator 1, a weight operand 2 (its two sign-extended pairs), a pixel's two pair broadcasts 2.
REGFILE = {"avx2": (16, 2, 4, 2), "vnni16": (32, 1, 2, 2)}
TEMPS = {"avx2": 2}  # registers a step's products take before their add (`vpdpwssd` adds in place)
SPILL_COST = 1.08  # measured: AVX2's (1, 1, 5) tile against its waste-adjusted (1, 1, 4) (`choose_tile`)


def choose_tile(o: int, oh: int, ow: int, w4: bool = False, regs_per_acc: int = 1,
                isa: str | None = None) -> tuple[int, int, int]:
    """Register tile (ocbi, ohi, owi): ocbi blocks of 16 output channels x ohi x owi pixels.

    Accumulators ocbi*ohi*owi <= MAX_ACC; plus the ocbi weight vectors and (when ocbi > 1) the
    reused broadcasts ohi*owi they must fit the 32 vector registers (a 16-lane accumulator or
    weight operand takes `regs_per_acc` of them: 1 zmm on AVX-512, 4 q-registers on NEON; an isa
    in `REGFILE` names its own register count and costs, e.g. AVX2's 16 ymm). Cost model: padding waste times
    (acc + 2) / acc (few independent accumulators leave the 4-5 cycle latency of `vpdpbusd`
    exposed), ties to more channel blocks (fewer broadcast loads per instruction). With 4-bit weights
    each weight operand costs more instructions to unpack (`cpu_conv`), shared by the ohi*owi
    pixels of the tile: + ocbi in the numerator (a weight picked from timings of a few 3x3 convs).

    For an isa in `REGFILE` the latency term counts add chains: an AVX2 accumulator is two ymm, two
    chains, so (2 acc + 2) / (2 acc). A tile that leaves no register for one pixel's broadcasts and the
    step's two products (AVX2's 5 accumulators: 10 + 4 + 2 + 2 > 16 ymm) costs SPILL_COST more: it
    ran 4-16 % slower than the waste and chains predict in `benchmarks/avx2_tiles.py` (Zen 3, 1 thread,
    two runs, `benchmarks/results/avx2_tiles.md`). There the tile picked is the fastest measured or
    within 4 % of it, except 17x17 (7 % off; (1, 1, 5) was 12 % off), and the 14x14 stage gets (1, 2, 2)
    instead of (1, 1, 5), 6-11 % faster."""
    ocb = ceil_div(o, 16)
    nregs, per_acc, per_w, per_b = REGFILE.get(isa, (32, regs_per_acc, regs_per_acc, 1))
    best, best_key = (1, 1, 1), None
    for ocbi in (1, 2, 3, 4):
        if ocb % ocbi:
            continue
        for ohi in (1, 2, 3, 4):
            for owi in range(1, MAX_ACC + 1):
                acc = ocbi * ohi * owi
                regs = acc * per_acc + ocbi * per_w + (ohi * owi * per_b if ocbi > 1 else 0)
                if regs > nregs - 1 or acc > MAX_ACC or ohi > oh or owi > ow:
                    continue
                waste = ceil_div(oh, ohi) * ohi * ceil_div(ow, owi) * owi / (oh * ow)
                chains = acc * (per_acc if isa in REGFILE else 1)
                cost = waste * (chains + 2 + (ocbi if w4 else 0)) / chains
                if isa in TEMPS and regs + (per_b if ocbi == 1 else 0) + TEMPS[isa] > nregs:
                    cost *= SPILL_COST  # no register left for the pixel's broadcasts and the two products
                key = (round(cost, 3), -ocbi, ohi)
                if best_key is None or key < best_key:
                    best, best_key = (ocbi, ohi, owi), key
    return best


def kernel_tile(isa: str, o: int, oh: int, ow: int, depthwise: bool = False, w4: bool = False) -> tuple[int, int, int]:
    """The register tile of a conv / GEMM kernel on `isa`: `choose_tile` where a dot-product or
    int16 step runs (16-lane vectors: 1 zmm on VNNI, 4 NEON q-registers, AVX2 / vnni16 from `REGFILE`),
    else (1, 1, 4) (the int32-lane fallbacks)."""
    if isa in DOT_ISAS or (isa in INT16_ISAS and not depthwise) or (isa == "vnni16" and depthwise):  # `dw_pairs`
        return choose_tile(16 if depthwise else o, oh, ow, w4, 1 if isa == "vnni" else 4, isa=isa)
    return (1, 1, 4)


def mmla_tile(oh: int, ow: int) -> tuple[int, int, int]:
    """Register tile of the `usmmla` conv: 2 pixel pairs (16 accumulator + 8 weight + 2 input q-registers)."""
    return (1, 2, 2) if ow <= 2 and oh >= 2 else (1, 1, 4)


def group_blocks(c: int, o: int, groups: int, w_in: int, w_bits, packed: bool, isa: str | None) -> int:
    """`ConvSpec.gcb` of a grouped conv the dot-product kernels take, else 0: square groups (C/g == O/g)
    of 8-bit weights, C/g dividing 16 or a multiple of it, on an isa with a dot-product or int16 step;
    the input packed or C % 16 == 0 (blocks of 16 channels, so no group straddles two blocks; a last
    part block's padded channels have zero weights)."""
    if (groups == 1 or c != o or c % groups or w_in != c // groups or w_bits != 8 or (c % 16 and not packed)
            or isa not in DOT_ISAS + INT16_ISAS):
        return 0
    cg = c // groups
    if cg < 2 or (16 % cg and cg % 16):
        return 0
    return max(16, cg) // 16
