// mpq_run: run an exported tvm-mpq model (a Relax VM executable .so) without Python, and time it.
//
//   mpq_run MODEL.so --input x.npy [--input y.npy ...] [--repeat 100] [--warmup 10]
//           [--output out.npy] [--threads N] [--json]
//
// Links only the TVM runtime (libtvm_runtime + libtvm_ffi) and uses only the tvm-ffi C++ API.
// Exit status: 0 ok, 2 usage or bad input (files, shapes, dtypes), 1 runtime failure.
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "npy.h"

namespace ffi = tvm::ffi;

namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

const char* kUsage =
    "usage: mpq_run MODEL.so --input x.npy [--input y.npy ...] [--repeat N] [--warmup N]\n"
    "               [--output out.npy] [--threads N] [--json]\n"
    "\n"
    "Runs an exported tvm-mpq model (CompiledModel.export) on the CPU without Python: prints the\n"
    "output (or writes it with --output) and latency statistics in ms over --repeat timed runs.\n"
    "\n"
    "  --input PATH    .npy input (C order, little-endian), one per model parameter, in order\n"
    "  --repeat N      timed runs (default 100; 0: run once, no timing)\n"
    "  --warmup N      untimed runs before timing (default 10)\n"
    "  --output PATH   write the output to .npy (several outputs: PATH_0.npy, PATH_1.npy, ...)\n"
    "  --threads N     TVM runtime threads (sets TVM_NUM_THREADS; default: the runtime's choice)\n"
    "  --json          print one JSON object (output shapes, latency stats) instead of text\n"
    "\n"
    "exit status: 0 ok, 2 usage or bad input, 1 runtime failure\n";

// An error that ends the program with a one-line message and an exit status.
struct Exit {
  int code;
  std::string message;
};

[[noreturn]] void Fail(int code, const std::string& message) { throw Exit{code, message}; }

struct Options {
  std::string model;
  std::vector<std::string> inputs;
  std::string output;
  int64_t repeat = 100;
  int64_t warmup = 10;
  int64_t threads = 0;  // 0: leave TVM_NUM_THREADS alone
  bool json = false;
};

int64_t ParseCount(const std::string& flag, const std::string& value, int64_t min) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || v < min) {
    Fail(kExitUsage, flag + " expects an integer >= " + std::to_string(min) + ", got '" + value + "'");
  }
  return v;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--json") {
      opt.json = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      positional.push_back(arg);
      continue;
    }
    size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Fail(kExitUsage, arg + " needs a value (see mpq_run --help)");
    }
    if (arg == "--input") {
      opt.inputs.push_back(value);
    } else if (arg == "--output") {
      opt.output = value;
    } else if (arg == "--repeat") {
      opt.repeat = ParseCount(arg, value, 0);
    } else if (arg == "--warmup") {
      opt.warmup = ParseCount(arg, value, 0);
    } else if (arg == "--threads") {
      opt.threads = ParseCount(arg, value, 1);
    } else {
      Fail(kExitUsage, "unknown option " + arg + " (see mpq_run --help)");
    }
  }
  if (positional.size() != 1) {
    Fail(kExitUsage, positional.empty() ? "no model given (usage: mpq_run MODEL.so --input x.npy ...)"
                                        : "one model expected, got '" + positional[1] + "' too (inputs go after --input)");
  }
  opt.model = positional[0];
  return opt;
}

// --- tensors ---------------------------------------------------------------------------------

// 64-byte aligned host memory, as TVM's own CPU allocator gives kernels.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (std::max<size_t>(ffi::GetDataSize(*t), 1) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ToTensor(const npy::Array& a) {
  DLDataType dt{a.dtype.code, a.dtype.bits, 1};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(a.shape.data(), a.shape.size()), dt,
                                           DLDevice{kDLCPU, 0});
  if (!a.data.empty()) std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

// A model output copied out of the VM's memory.
struct Output {
  std::vector<int64_t> shape;
  npy::DType dtype;
  std::vector<char> data;
};

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) Flatten(item, out);
  } else {
    Fail(kExitRuntime, "the model returned a " + value.GetTypeKey() + "; mpq_run handles tensors and tuples of tensors");
  }
}

std::vector<Output> CopyOutputs(const ffi::Any& ret) {
  std::vector<ffi::Tensor> tensors;
  Flatten(ret, &tensors);
  std::vector<Output> outs;
  for (const ffi::Tensor& t : tensors) {
    if (t.device().device_type != kDLCPU || !t.IsContiguous() || t.dtype().lanes != 1) {
      Fail(kExitRuntime, "the model returned a non-contiguous, vector-typed or non-CPU tensor");
    }
    Output o;
    o.shape.assign(t.shape().begin(), t.shape().end());
    o.dtype = {t.dtype().code, uint8_t(t.dtype().bits)};
    const char* src = static_cast<const char*>(t.data_ptr()) + t.byte_offset();
    o.data.assign(src, src + ffi::GetDataSize(t));
    outs.push_back(std::move(o));
  }
  return outs;
}

double Element(const Output& o, int64_t i) {
  const char* p = o.data.data();
  switch (o.dtype.code) {
    case npy::kFloat:
      if (o.dtype.bits == 32) return reinterpret_cast<const float*>(p)[i];
      if (o.dtype.bits == 64) return reinterpret_cast<const double*>(p)[i];
      return NAN;
    case npy::kInt:
      if (o.dtype.bits == 8) return reinterpret_cast<const int8_t*>(p)[i];
      if (o.dtype.bits == 16) return reinterpret_cast<const int16_t*>(p)[i];
      if (o.dtype.bits == 32) return reinterpret_cast<const int32_t*>(p)[i];
      if (o.dtype.bits == 64) return double(reinterpret_cast<const int64_t*>(p)[i]);
      return NAN;
    case npy::kUInt:
    case npy::kBool:
      if (o.dtype.bits == 8) return reinterpret_cast<const uint8_t*>(p)[i];
      if (o.dtype.bits == 16) return reinterpret_cast<const uint16_t*>(p)[i];
      if (o.dtype.bits == 32) return reinterpret_cast<const uint32_t*>(p)[i];
      if (o.dtype.bits == 64) return double(reinterpret_cast<const uint64_t*>(p)[i]);
      return NAN;
  }
  return NAN;
}

// --- the VM's argument errors, in the user's terms --------------------------------------------

std::string Between(const std::string& s, const std::string& open, const std::string& close, size_t from = 0) {
  size_t a = s.find(open, from);
  if (a == std::string::npos) return "";
  a += open.size();
  size_t b = s.find(close, a);
  return b == std::string::npos ? "" : s.substr(a, b - a);
}

std::string FirstLine(std::string s) {
  size_t nl = s.find('\n');
  if (nl != std::string::npos) s = s.substr(0, nl);
  return s;
}

// The Relax VM checks each argument against its annotation and raises e.g.
//   ErrorContext(fn=main, loc=param[0], param=x, annotation=R.Tensor((1, 1, 32, 32), dtype="float32"))
//   match_cast error, shape[1] mismatch to specified constant.
// Returns "" when the error is not such an argument check.
std::string DescribeArgumentError(const std::string& message, const Options& opt, const std::vector<npy::Array>& in) {
  std::string index = Between(message, "loc=param[", "]");
  std::string annotation = Between(message, "annotation=", "))");
  if (index.empty() || annotation.empty()) return "";
  annotation += ")";
  size_t i = std::strtoul(index.c_str(), nullptr, 10);
  if (i >= in.size()) return "";
  std::string expected = annotation;  // fallback: the annotation as Relax prints it
  if (annotation.rfind("R.Tensor((", 0) == 0) {
    std::string shape = "(" + Between(annotation, "R.Tensor((", ")") + ")";
    std::string dtype = Between(annotation, "dtype=\"", "\"");
    if (!dtype.empty()) expected = shape + " " + dtype;
  }
  std::string param = Between(message, "param=", ",");
  return "input " + std::to_string(i) + " (" + opt.inputs[i] + ") has shape " + npy::ShapeStr(in[i].shape) + " " +
         npy::DTypeName(in[i].dtype) + ", model expects " + expected + (param.empty() ? "" : " for parameter '" + param + "'");
}

// --- statistics and printing ------------------------------------------------------------------

struct Stats {
  double mean, median, min, max, p90, std;
};

Stats Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  auto quantile = [&](double q) {  // linear interpolation, as numpy.percentile
    double pos = q * double(n - 1);
    size_t lo = size_t(pos);
    size_t hi = std::min(lo + 1, n - 1);
    return ms[lo] + (ms[hi] - ms[lo]) * (pos - double(lo));
  };
  double sum = 0, sq = 0;
  for (double x : ms) sum += x;
  const double mean = sum / double(n);
  for (double x : ms) sq += (x - mean) * (x - mean);
  return {mean, quantile(0.5), ms.front(), ms.back(), quantile(0.9), std::sqrt(sq / double(n))};
}

std::string JsonString(const std::string& s) {
  std::string r = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      r += '\\';
      r += char(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      r += buf;
    } else {
      r += char(c);
    }
  }
  return r + "\"";
}

std::string JsonShape(const std::vector<int64_t>& shape) {
  std::string r = "[";
  for (size_t i = 0; i < shape.size(); ++i) r += (i ? ", " : "") + std::to_string(shape[i]);
  return r + "]";
}

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string OutputPath(const std::string& path, size_t i, size_t n) {
  if (n == 1) return path;
  std::string stem = path.size() > 4 && path.compare(path.size() - 4, 4, ".npy") == 0 ? path.substr(0, path.size() - 4) : path;
  return stem + "_" + std::to_string(i) + ".npy";
}

void PrintOutput(const Output& o, size_t index) {
  std::cout << "output " << index << ": shape " << npy::ShapeStr(o.shape) << " " << npy::DTypeName(o.dtype) << "\n";
  const int64_t n = npy::Numel(o.shape);
  if (o.dtype.code == npy::kFloat && o.dtype.bits == 16) return;  // no half -> double here; use --output
  if (o.shape.size() == 2 && o.shape[1] > 0) {
    std::cout << "  argmax:";
    for (int64_t r = 0; r < std::min<int64_t>(o.shape[0], 16); ++r) {
      int64_t best = 0;
      for (int64_t c = 1; c < o.shape[1]; ++c) {
        if (Element(o, r * o.shape[1] + c) > Element(o, r * o.shape[1] + best)) best = c;
      }
      std::cout << " " << best;
    }
    std::cout << (o.shape[0] > 16 ? " ..." : "") << "\n";
  }
  std::cout << "  values:";
  for (int64_t i = 0; i < std::min<int64_t>(n, 10); ++i) std::cout << " " << Num(Element(o, i));
  std::cout << (n > 10 ? " ..." : "") << "\n";
}

// --- main -------------------------------------------------------------------------------------

ffi::Function Require(const ffi::Module& mod, const char* name, const std::string& model) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(name);
  if (!f.has_value()) {
    Fail(kExitUsage, model + " is not a Relax VM executable (no " + name +
                         "); export the model with tvm_mpq's CompiledModel.export");
  }
  return f.value();
}

int Run(const Options& opt) {
  struct stat st;
  if (stat(opt.model.c_str(), &st) != 0) {
    Fail(kExitUsage, "model file not found: " + opt.model + " (export one with CompiledModel.export(path))");
  }
  if (!S_ISREG(st.st_mode)) Fail(kExitUsage, "model " + opt.model + " is not a file (give the exported .so)");
  std::vector<npy::Array> inputs;
  for (size_t i = 0; i < opt.inputs.size(); ++i) {
    try {
      inputs.push_back(npy::Load(opt.inputs[i]));
    } catch (const npy::NpyError& e) {
      Fail(kExitUsage, "input " + std::to_string(i) + ": " + e.what());
    }
  }
  // The runtime's thread pool reads TVM_NUM_THREADS when it first starts, i.e. after this.
  if (opt.threads > 0) setenv("TVM_NUM_THREADS", std::to_string(opt.threads).c_str(), 1);

  std::optional<ffi::Module> loaded;
  try {
    // dlopen looks a name without '/' up in the library path, not the working directory.
    loaded = ffi::Module::LoadFromFile(opt.model.find('/') == std::string::npos ? "./" + opt.model : opt.model);
  } catch (const ffi::Error& e) {
    Fail(kExitRuntime, "cannot load " + opt.model + ": " + FirstLine(e.message()));
  }
  const ffi::Module& lib = *loaded;
  ffi::Module vm = Require(lib, "vm_load_executable", opt.model)().cast<ffi::Module>();
  Require(vm, "vm_initialization", opt.model)(static_cast<int>(kDLCPU), 0, /*pooled allocator*/ 2);
  ffi::Function main_fn = Require(vm, "main", opt.model);

  const int64_t arity = Require(vm, "get_function_arity", opt.model)(ffi::String("main")).cast<int64_t>();
  if (arity != int64_t(inputs.size())) {
    ffi::Function param_name = Require(vm, "get_function_param_name", opt.model);
    std::string names, flags;
    for (int64_t i = 0; i < arity; ++i) {
      std::string name = param_name(ffi::String("main"), i).cast<ffi::String>();
      names += (i ? ", " : "") + name;
      flags += " --input " + name + ".npy";
    }
    Fail(kExitUsage, "the model takes " + std::to_string(arity) + " input(s) (" + names + "), got " +
                         std::to_string(inputs.size()) + "; give one --input per parameter, in order:" + flags);
  }

  std::vector<ffi::Tensor> tensors;
  for (const npy::Array& a : inputs) tensors.push_back(ToTensor(a));
  std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());
  auto call = [&]() {
    ffi::Any ret;
    main_fn.CallPacked(args.data(), int32_t(args.size()), &ret);
    return ret;
  };

  std::vector<Output> outputs;
  try {
    outputs = CopyOutputs(call());
  } catch (const ffi::Error& e) {
    std::string described = DescribeArgumentError(e.message(), opt, inputs);
    if (!described.empty()) Fail(kExitUsage, described);
    Fail(kExitRuntime, "running " + opt.model + " failed: " + e.kind() + ": " + FirstLine(e.message()));
  }

  std::vector<std::string> written;
  if (!opt.output.empty()) {
    for (size_t i = 0; i < outputs.size(); ++i) {
      const Output& o = outputs[i];
      if (o.dtype.code == npy::kBool ? o.dtype.bits != 8 : o.dtype.bits % 8 != 0) {
        Fail(kExitRuntime, "cannot write output " + std::to_string(i) + " (" + npy::DTypeName(o.dtype) + ") to .npy");
      }
      std::string path = OutputPath(opt.output, i, outputs.size());
      try {
        npy::Save(path, o.shape, o.dtype, o.data.data());
      } catch (const npy::NpyError& e) {
        Fail(kExitUsage, std::string("output: ") + e.what());
      }
      written.push_back(path);
    }
  }

  std::vector<double> ms;
  try {
    for (int64_t i = 0; i < opt.warmup; ++i) call();
    for (int64_t i = 0; i < opt.repeat; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      call();
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
  } catch (const ffi::Error& e) {
    Fail(kExitRuntime, "timing " + opt.model + " failed: " + e.kind() + ": " + FirstLine(e.message()));
  }

  int64_t threads = -1;
  if (auto f = ffi::Function::GetGlobal("runtime.NumThreads")) threads = (*f)().cast<int64_t>();

  if (opt.json) {
    std::ostringstream j;
    j << "{\"model\": " << JsonString(opt.model) << ", \"inputs\": [";
    for (size_t i = 0; i < inputs.size(); ++i) {
      j << (i ? ", " : "") << "{\"path\": " << JsonString(opt.inputs[i]) << ", \"shape\": " << JsonShape(inputs[i].shape)
        << ", \"dtype\": " << JsonString(npy::DTypeName(inputs[i].dtype)) << "}";
    }
    j << "], \"outputs\": [";
    for (size_t i = 0; i < outputs.size(); ++i) {
      j << (i ? ", " : "") << "{\"shape\": " << JsonShape(outputs[i].shape)
        << ", \"dtype\": " << JsonString(npy::DTypeName(outputs[i].dtype));
      if (!written.empty()) j << ", \"path\": " << JsonString(written[i]);
      j << "}";
    }
    j << "], \"output_shape\": " << JsonShape(outputs.empty() ? std::vector<int64_t>{} : outputs[0].shape)
      << ", \"threads\": " << threads << ", \"warmup\": " << opt.warmup << ", \"repeat\": " << opt.repeat
      << ", \"latency_ms\": ";
    if (ms.empty()) {
      j << "null";
    } else {
      Stats s = Summarize(ms);
      j << "{\"mean\": " << Num(s.mean) << ", \"median\": " << Num(s.median) << ", \"min\": " << Num(s.min)
        << ", \"max\": " << Num(s.max) << ", \"p90\": " << Num(s.p90) << ", \"std\": " << Num(s.std) << "}";
    }
    j << "}";
    std::cout << j.str() << std::endl;
    return 0;
  }

  std::cout << "model " << opt.model << ": " << inputs.size() << " input(s), " << outputs.size() << " output(s), "
            << threads << " thread(s)\n";
  for (size_t i = 0; i < outputs.size(); ++i) PrintOutput(outputs[i], i);
  for (const std::string& p : written) std::cout << "wrote " << p << "\n";
  if (!ms.empty()) {
    Stats s = Summarize(ms);
    std::cout << "latency over " << opt.repeat << " runs (" << opt.warmup << " warmup), ms: mean " << Num(s.mean)
              << "  median " << Num(s.median) << "  min " << Num(s.min) << "  max " << Num(s.max) << "  p90 "
              << Num(s.p90) << "  std " << Num(s.std) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const Exit& e) {
    std::cerr << "mpq_run: " << e.message << std::endl;
    return e.code;
  } catch (const ffi::Error& e) {
    std::cerr << "mpq_run: " << e.kind() << ": " << FirstLine(e.message()) << std::endl;
    return kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "mpq_run: " << e.what() << std::endl;
    return kExitRuntime;
  }
}
