// Minimal .npy reader/writer for mpq_run (NumPy format versions 1-3, C order, little-endian).
//
// Header-only and free of TVM: an array is a shape, a DLPack-style dtype and raw bytes.
// Every failure is an NpyError whose message names the file and what to do about it.
#ifndef TVM_MPQ_DEPLOY_NPY_H_
#define TVM_MPQ_DEPLOY_NPY_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// DLPack type codes (dlpack.h: kDLInt=0, kDLUInt=1, kDLFloat=2, kDLBool=6).
enum Code : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBool = 6 };

struct DType {
  uint8_t code;
  uint8_t bits;
  bool operator==(const DType& o) const { return code == o.code && bits == o.bits; }
};

struct Array {
  std::vector<int64_t> shape;
  DType dtype{kFloat, 32};
  std::vector<char> data;  // shape-product * bits/8 bytes, C order
};

inline int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// "float32", "int8", "bool" (the names NumPy and TVM both print).
inline std::string DTypeName(DType t) {
  switch (t.code) {
    case kFloat: return "float" + std::to_string(t.bits);
    case kInt: return "int" + std::to_string(t.bits);
    case kUInt: return "uint" + std::to_string(t.bits);
    case kBool: return "bool";
  }
  return "dtype(code=" + std::to_string(t.code) + ",bits=" + std::to_string(t.bits) + ")";
}

// "(1, 1, 32, 32)" like NumPy; "(10,)" for one dimension.
inline std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

namespace detail {

inline std::string DescrOf(DType t) {
  char kind = t.code == kFloat ? 'f' : t.code == kInt ? 'i' : t.code == kUInt ? 'u' : 'b';
  char order = t.bits == 8 ? '|' : '<';
  return std::string(1, order) + kind + std::to_string(t.bits / 8);
}

// Value of 'key' in the header dict, up to the next top-level ',' or '}' (a shape tuple is kept whole).
inline std::string DictValue(const std::string& header, const std::string& key, const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw NpyError(path + ": malformed .npy header (no '" + key + "')");
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) throw NpyError(path + ": malformed .npy header near '" + key + "'");
  size_t i = colon + 1;
  while (i < header.size() && header[i] == ' ') ++i;
  size_t end = i;
  int depth = 0;
  for (; end < header.size(); ++end) {
    char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  std::string v = header.substr(i, end - i);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

inline DType ParseDescr(std::string d, const std::string& path) {
  if (d.size() >= 2 && (d.front() == '\'' || d.front() == '"')) d = d.substr(1, d.size() - 2);
  if (d.size() < 3) throw NpyError(path + ": unsupported .npy dtype '" + d + "'");
  char order = d[0], kind = d[1];
  int bytes = std::atoi(d.c_str() + 2);
  if (order == '>' && bytes > 1) {
    throw NpyError(path + ": big-endian dtype '" + d + "' is not supported; save it with arr.astype(arr.dtype.newbyteorder('<'))");
  }
  if (order != '<' && order != '|' && order != '=' && !(order == '>' && bytes == 1)) {
    throw NpyError(path + ": unsupported .npy dtype '" + d + "'");
  }
  bool ok_bytes = bytes == 1 || bytes == 2 || bytes == 4 || bytes == 8;
  if (kind == 'f' && (bytes == 2 || bytes == 4 || bytes == 8)) return {kFloat, uint8_t(bytes * 8)};
  if (kind == 'i' && ok_bytes) return {kInt, uint8_t(bytes * 8)};
  if (kind == 'u' && ok_bytes) return {kUInt, uint8_t(bytes * 8)};
  if (kind == 'b' && bytes == 1) return {kBool, 8};
  throw NpyError(path + ": unsupported .npy dtype '" + d + "' (use float16/32/64, int8-64, uint8-64 or bool)");
}

inline std::vector<int64_t> ParseShape(const std::string& v, const std::string& path) {
  if (v.size() < 2 || v.front() != '(' || v.back() != ')') {
    throw NpyError(path + ": malformed .npy header (shape '" + v + "')");
  }
  std::vector<int64_t> shape;
  std::string body = v.substr(1, v.size() - 2);
  std::stringstream ss(body);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t a = item.find_first_not_of(' ');
    if (a == std::string::npos) continue;  // trailing comma of "(10,)"
    size_t b = item.find_last_not_of(' ');
    std::string num = item.substr(a, b - a + 1);
    if (!num.empty() && num.back() == 'L') num.pop_back();  // Python 2 longs
    char* end = nullptr;
    long long d = std::strtoll(num.c_str(), &end, 10);
    if (num.empty() || *end != '\0' || d < 0) throw NpyError(path + ": malformed .npy header (shape '" + v + "')");
    shape.push_back(d);
  }
  return shape;
}

}  // namespace detail

inline Array Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw NpyError(path + ": cannot open (no such file, or not readable)");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw NpyError(path + ": not a .npy file (save the input with numpy.save)");
  }
  uint8_t major = uint8_t(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) throw NpyError(path + ": truncated .npy header");
    header_len = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) throw NpyError(path + ": truncated .npy header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  } else {
    throw NpyError(path + ": unsupported .npy format version " + std::to_string(major));
  }
  if (header_len > (1u << 20)) throw NpyError(path + ": malformed .npy header (length " + std::to_string(header_len) + ")");
  std::string header(header_len, '\0');
  if (!f.read(&header[0], header_len)) throw NpyError(path + ": truncated .npy header");

  Array arr;
  arr.dtype = detail::ParseDescr(detail::DictValue(header, "descr", path), path);
  std::string fortran = detail::DictValue(header, "fortran_order", path);
  if (fortran == "True") {
    throw NpyError(path + ": Fortran-order array; save a C-order copy with numpy.save(path, numpy.ascontiguousarray(x))");
  }
  if (fortran != "False") throw NpyError(path + ": malformed .npy header (fortran_order '" + fortran + "')");
  arr.shape = detail::ParseShape(detail::DictValue(header, "shape", path), path);

  // Compare with the bytes left in the file before allocating (a corrupt shape must not allocate terabytes).
  const std::streamoff data_start = f.tellg();
  f.seekg(0, std::ios::end);
  const std::streamoff have = f.tellg() - data_start;
  f.seekg(data_start);
  int64_t want = arr.dtype.bits / 8;
  for (int64_t d : arr.shape) {
    if (d != 0 && want > have / d) {
      want = -1;
      break;
    }
    want *= d;
  }
  if (want < 0 || want > have) {
    throw NpyError(path + ": truncated data (" + std::to_string(have) + " bytes for shape " + ShapeStr(arr.shape) +
                   " " + DTypeName(arr.dtype) + ")");
  }
  arr.data.resize(size_t(want));
  if (want > 0 && !f.read(arr.data.data(), want)) throw NpyError(path + ": read failed");
  return arr;
}

// Writes a version-1 .npy file; `data` holds Numel(shape) * bits/8 bytes in C order.
inline void Save(const std::string& path, const std::vector<int64_t>& shape, DType dtype, const void* data) {
  std::string dict = "{'descr': '" + detail::DescrOf(dtype) + "', 'fortran_order': False, 'shape': " + ShapeStr(shape) + ", }";
  size_t total = 10 + dict.size() + 1;  // magic+version+len, dict, '\n'
  size_t pad = (64 - total % 64) % 64;
  dict += std::string(pad, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  if (!f) throw NpyError(path + ": cannot open for writing");
  uint16_t len = uint16_t(dict.size());
  const char head[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(head, 8);
  const char lenb[2] = {char(len & 0xff), char(len >> 8)};
  f.write(lenb, 2);
  f.write(dict.data(), std::streamsize(dict.size()));
  f.write(static_cast<const char*>(data), std::streamsize(Numel(shape) * (dtype.bits / 8)));
  if (!f) throw NpyError(path + ": write failed");
}

}  // namespace npy

#endif  // TVM_MPQ_DEPLOY_NPY_H_
