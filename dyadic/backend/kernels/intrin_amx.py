"""Intel AMX tile instructions emitted from TIR (an IRBuilder context), and their emulation.

`TileOps(rows, ...)` emits, inside a `tvm.tirx.script.builder` prim_func, the LLVM x86 AMX
intrinsics with immediate tile-register numbers:
    llvm.x86.ldtilecfg(ptr)                 the 64-byte configuration below
    llvm.x86.tilezero(i8 t)
    llvm.x86.tileloadd64(i8 t, ptr, i64 stride)   rows x colsb bytes, rows `stride` bytes apart
    llvm.x86.tdpbusd(i8 c, i8 a, i8 b)       C += A (u8) . B (s8), see `amx_layout`
    llvm.x86.tdpbssd(i8 c, i8 a, i8 b)       C += A (s8) . B (s8): the hi plane of 16-bit input
    llvm.x86.tilestored64(i8 t, ptr, i64 stride)
    llvm.x86.tilerelease()
Configuration (palette 1): byte 0 = 1, bytes 16 + 2t = colsb of tile t (uint16, little endian),
byte 48 + t = its rows. C tiles 0..P mb nb - 1 (P = 1, or 2 byte planes of 16-bit input: plane p's
C tile (i, j) is p mb nb + i nb + j): M rows x 64 bytes (16 int32); A tiles next (P mb): M x 64;
B tiles last: 16 x 64. Unused tiles stay 0 x 0.

`TileOps(..., emulate=True)` emits the same operations as plain TIR loops on a tile register file
in local buffers (the instruction semantics of `amx_layout.tdpbusd`), so the whole kernel (staging,
addressing, packing, epilogue) is built and run bit-exact on a CPU without AMX; only these
instruction bodies differ from the AMX build.
"""
from __future__ import annotations

from tvm import tirx
from tvm.tirx.script.builder import ir as T

LLVM_INTRINSICS = ("llvm.x86.ldtilecfg", "llvm.x86.tilezero", "llvm.x86.tileloadd64", "llvm.x86.tdpbusd",
                   "llvm.x86.tdpbssd", "llvm.x86.tilestored64", "llvm.x86.tilerelease")
#: mnemonics an AMX kernel's disassembly holds (the tests look for them)
MNEMONICS = ("ldtilecfg", "tileloadd", "tdpbusd", "tilestored", "tilerelease")


def _call(name: str, *args) -> None:
    T.evaluate(tirx.call_llvm_intrin("void", name, *args))


def _i8(v: int):
    return tirx.const(v, "int8")


class TileOps:
    """Tile numbering and operations for one kernel: mb A tiles, nb B tiles, M rows per A/C tile."""

    def __init__(self, rows: int, mb: int, nb: int, emulate: bool = False, planes: int = 1):
        assert 1 <= rows <= 16 and planes * (mb * nb + mb) + nb <= 8
        self.rows, self.mb, self.nb, self.emulate, self.planes = rows, mb, nb, emulate, planes

    def c(self, i: int, j: int, p: int = 0) -> int:
        return (p * self.mb + i) * self.nb + j

    def a(self, i: int, p: int = 0) -> int:
        return self.planes * self.mb * self.nb + p * self.mb + i

    def b(self, j: int) -> int:
        return self.planes * (self.mb * self.nb + self.mb) + j

    def config_bytes(self) -> list[int]:
        cfg = [0] * 64
        cfg[0] = 1
        pl, mb, nb = range(self.planes), range(self.mb), range(self.nb)
        shapes = [(self.c(i, j, p), self.rows) for p in pl for i in mb for j in nb]
        shapes += [(self.a(i, p), self.rows) for p in pl for i in mb] + [(self.b(j), 16) for j in nb]
        for t, rows in shapes:
            cfg[16 + 2 * t], cfg[48 + t] = 64, rows
        return cfg

    # ------------------------------------------------------------ per parallel task
    def begin(self) -> None:
        """Configure the tiles (once per parallel task: the configuration is per thread)."""
        if self.emulate:
            self.ta = T.alloc_buffer((self.planes * self.mb * 1024,), "uint8", scope="local")
            self.tb = T.alloc_buffer((self.nb * 1024,), "int8", scope="local")
            self.tc = T.alloc_buffer((self.planes * self.mb * self.nb * 256,), "int32", scope="local")
            return
        cfg = T.alloc_buffer((64,), "uint8", scope="local")
        for k, v in enumerate(self.config_bytes()):
            T.buffer_store(cfg, tirx.const(v, "uint8"), [k])
        _call("llvm.x86.ldtilecfg", tirx.address_of(cfg[0]))

    def end(self) -> None:
        if not self.emulate:
            _call("llvm.x86.tilerelease")

    # ------------------------------------------------------------ instructions
    def zero(self, t: int) -> None:
        if not self.emulate:
            return _call("llvm.x86.tilezero", _i8(t))
        with T.serial(0, self.rows * 16) as e:
            T.buffer_store(self.tc, tirx.const(0, "int32"), [t * 256 + e])

    def load(self, t: int, buf, offset, stride: int) -> None:
        """tileloadd: tile t <- rows x 64 bytes of the flat buffer from element `offset`, `stride` apart."""
        if not self.emulate:
            return _call("llvm.x86.tileloadd64", _i8(t), tirx.address_of(buf[offset]), tirx.const(stride, "int64"))
        rows = 16 if t >= self.b(0) else self.rows
        dst, base = (self.tb, (t - self.b(0)) * 1024) if t >= self.b(0) else (self.ta, (t - self.a(0)) * 1024)
        with T.serial(0, rows) as r:
            with T.serial(0, 64) as e:
                T.buffer_store(dst, tirx.reinterpret(dst.dtype, buf[offset + r * stride + e]), [base + r * 64 + e])

    def dot(self, c: int, a: int, b: int, signed: bool = False) -> None:
        """tdpbusd c, a, b (signed: tdpbssd, A's bytes signed)."""
        if not self.emulate:
            return _call("llvm.x86.tdpbssd" if signed else "llvm.x86.tdpbusd", _i8(c), _i8(a), _i8(b))
        ao, bo = (a - self.a(0)) * 1024, (b - self.b(0)) * 1024
        with T.serial(0, self.rows) as r:
            with T.serial(0, 16) as n:
                with T.serial(0, 64) as k:
                    idx = c * 256 + r * 16 + n
                    av = self.ta[ao + r * 64 + k]
                    av = tirx.reinterpret("int8", av) if signed else av
                    T.buffer_store(self.tc, self.tc[idx] + av.astype("int32")
                                   * self.tb[bo + (k // 4) * 64 + n * 4 + k % 4].astype("int32"), [idx])

    def store(self, t: int, scratch, offset: int = 0) -> None:
        """tilestored: C tile t -> the int32 scratch [16, 16] from element `offset` (rows 64 bytes apart)."""
        if not self.emulate:
            return _call("llvm.x86.tilestored64", _i8(t), tirx.address_of(scratch[offset]), tirx.const(64, "int64"))
        with T.serial(0, self.rows * 16) as e:
            T.buffer_store(scratch, self.tc[t * 256 + e], [offset + e])
