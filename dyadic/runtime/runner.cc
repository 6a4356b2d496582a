// dyadic-run: run a dyadic model library (a Relax VM executable) with the TVM runtime only.
//
// Built by dyadic.targets.arm for the target (e.g. aarch64) and shipped in the deploy bundle, so a board
// needs no Python. It depends only on the tvm-ffi headers and links libtvm_ffi + libtvm_runtime.
//
//   dyadic-run MODEL.so -i FILE:DTYPE:SHAPE [-i ...] -o OUT_PREFIX [-r REPS]
//     FILE   raw little-endian tensor data, C order        DTYPE  int8|uint8|int16|int32|int64
//     SHAPE  e.g. 1x3x32x32                                OUT_PREFIX  writes OUT_PREFIX<k>.bin
//   For each output it prints "output <k> <dtype> <shape> <file>"; with -r REPS it also runs `main`
//   REPS more times and prints "timing: median <ms> ms, min <ms> ms over <REPS> runs".
//
// x86-64 Linux: a library with AMX kernels (model.json beside MODEL.so says "amx_tile_data": true, or
// --amx) needs the process's AMX tile-data permission before its first tile instruction:
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). The runner checks the CPU (cpuid leaf 7:
// AMX-TILE, AMX-INT8) and asks for it before loading the library; a CPU without AMX or a kernel that
// refuses is a one-line error and exit status 2, never a SIGILL.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#endif

using namespace tvm;

namespace {

struct AlignedAlloc {  // 64-byte aligned host buffers: generated kernels use aligned vector loads
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void Fail(const std::string& msg) {
  std::fprintf(stderr, "dyadic-run: %s\n", msg.c_str());
  std::exit(2);
}

DLDataType ParseDType(const std::string& s) {
  if (s == "int8") return {kDLInt, 8, 1};
  if (s == "uint8") return {kDLUInt, 8, 1};
  if (s == "int16") return {kDLInt, 16, 1};
  if (s == "int32") return {kDLInt, 32, 1};
  if (s == "int64") return {kDLInt, 64, 1};
  Fail("unsupported dtype '" + s + "' (int8, uint8, int16, int32, int64)");
}

std::string DTypeName(DLDataType t) {
  std::string base = t.code == kDLInt ? "int" : t.code == kDLUInt ? "uint" : t.code == kDLFloat ? "float" : "?";
  return base + std::to_string(t.bits);
}

// FILE:DTYPE:SHAPE -> a host tensor filled from FILE (its size must match exactly).
ffi::Tensor LoadInput(const std::string& spec) {
  size_t a = spec.rfind(':'), b = a == std::string::npos ? a : spec.rfind(':', a - 1);
  if (b == std::string::npos) Fail("input spec '" + spec + "' is not FILE:DTYPE:SHAPE");
  std::string file = spec.substr(0, b), dtype = spec.substr(b + 1, a - b - 1), dims = spec.substr(a + 1);
  std::vector<int64_t> shape;
  for (size_t p = 0; p <= dims.size();) {
    size_t q = dims.find('x', p);
    if (q == std::string::npos) q = dims.size();
    shape.push_back(std::atoll(dims.substr(p, q - p).c_str()));
    p = q + 1;
  }
  DLDataType dt = ParseDType(dtype);
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), dt, DLDevice{kDLCPU, 0});
  size_t n = ffi::GetDataSize(t);
  std::ifstream in(file, std::ios::binary | std::ios::ate);
  if (!in) Fail("cannot open input " + file);
  if (static_cast<size_t>(in.tellg()) != n)
    Fail(file + " holds " + std::to_string(static_cast<long long>(in.tellg())) + " bytes, " + dtype + " " + dims +
         " needs " + std::to_string(n));
  in.seekg(0);
  in.read(static_cast<char*>(t.data_ptr()), n);
  return t;
}

std::vector<ffi::Tensor> Outputs(const ffi::Any& ret) {
  if (auto t = ret.as<ffi::Tensor>()) return {*t};
  std::vector<ffi::Tensor> outs;
  for (const ffi::Any& v : ret.cast<ffi::Array<ffi::Any>>()) outs.push_back(v.cast<ffi::Tensor>());
  return outs;
}

// Whether model.json beside the library records AMX kernels ("amx_tile_data": true).
bool PlanNeedsAmx(const std::string& so) {
  size_t slash = so.rfind('/');
  std::ifstream in((slash == std::string::npos ? std::string() : so.substr(0, slash + 1)) + "model.json");
  std::string text, compact;
  if (!in) return false;
  text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  for (char ch : text)
    if (ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r') compact += ch;
  return compact.find("\"amx_tile_data\":true") != std::string::npos;
}

void RequestAmxTileData() {
#if defined(__x86_64__) && defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1))
    Fail("the library uses Intel AMX tiles (amx_int8, amx_tile), which this CPU does not have; compile it for "
         "this CPU (dyadic compile --target host)");
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0)
    Fail(std::string("the Linux kernel refused AMX tile-data permission (arch_prctl(ARCH_REQ_XCOMP_PERM): ") +
         std::strerror(errno) + "); AMX needs Linux >= 5.16");
  uint64_t mask = 0;
  if (syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &mask) != 0 || !((mask >> 18) & 1))
    Fail("Linux does not report AMX tile-data permission after the request");
#else
  Fail("the library uses Intel AMX tiles: only x86-64 Linux runs it");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h") {
    std::fprintf(stderr, "usage: dyadic-run MODEL.so -i FILE:DTYPE:SHAPE [-i ...] -o OUT_PREFIX [-r REPS] [--amx]\n");
    return 2;
  }
  std::vector<ffi::Any> inputs;
  std::string prefix = "out";
  int reps = 0;
  bool amx = PlanNeedsAmx(argv[1]);
  for (int k = 2; k < argc; ++k) {
    std::string flag = argv[k];
    if (flag == "--amx") {
      amx = true;
      continue;
    }
    if (k + 1 >= argc) Fail("flag " + flag + " needs a value");
    if (flag == "-i") inputs.push_back(LoadInput(argv[++k]));
    else if (flag == "-o") prefix = argv[++k];
    else if (flag == "-r") reps = std::atoi(argv[++k]);
    else Fail("unknown flag " + flag);
  }
  if (amx) RequestAmxTileData();  // before the library's first instruction
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
  ffi::Function fmain = vm->GetFunction("main").value();
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  auto call = [&]() {
    ffi::Any ret;
    fmain.CallPacked(args.data(), static_cast<int>(args.size()), &ret);
    return ret;
  };
  std::vector<ffi::Tensor> outs = Outputs(call());
  for (size_t k = 0; k < outs.size(); ++k) {
    const ffi::Tensor& o = outs[k];
    std::string file = prefix + std::to_string(k) + ".bin", shape;
    for (int d = 0; d < o.ndim(); ++d) shape += (d ? "x" : "") + std::to_string(o.shape()[d]);
    std::ofstream(file, std::ios::binary)
        .write(static_cast<const char*>(o.data_ptr()), ffi::GetDataSize(o));
    std::printf("output %zu %s %s %s\n", k, DTypeName(o.dtype()).c_str(), shape.c_str(), file.c_str());
  }
  if (reps > 0) {
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      call();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("timing: median %.3f ms, min %.3f ms over %d runs\n", ms[ms.size() / 2], ms[0], reps);
  }
  return 0;
}
