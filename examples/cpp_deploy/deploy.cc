// Runs a tvmopt artifact with the TVM runtime alone: no Python, no compiler, no ONNX.
//
//   tvmopt_deploy MODEL.so [--inputs DIR] [--outputs DIR] [--repeat N]
//
// The input names, shapes and dtypes come from the manifest that `tvmopt build` links into the
// library (the `tvmopt_manifest` symbol). Input NAME is read from DIR/NAME.bin (raw, C order) or is
// all zeros without --inputs; each output is printed and, with --outputs, written to DIR/NAME.bin.
// CPU artifacts (x86, ARM) run on the CPU; CUDA and ROCm ones on GPU 0, with the inputs copied there
// and the outputs back (the runtime from the apache-tvm wheel carries CUDA support).
#include <dlfcn.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;
using ffi::Tensor;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR
constexpr DLDevice kHost{kDLCPU, 0};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;
};

json::Object ReadManifest(const std::string& path) {
  // dlopen is enough to read a data symbol; the runtime below maps the same library again.
  void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (handle == nullptr) throw std::runtime_error(dlerror());
  auto* text = static_cast<const char*>(dlsym(handle, "tvmopt_manifest"));
  if (text == nullptr) {
    throw std::runtime_error(path + " has no tvmopt_manifest: build it with `tvmopt build`");
  }
  ffi::String error;
  json::Value manifest = json::Parse(text, &error);
  if (!error.empty()) throw std::runtime_error("damaged manifest: " + std::string(error));
  return manifest.cast<json::Object>();
}

std::vector<TensorSpec> Specs(const json::Object& manifest, const char* key) {
  std::vector<TensorSpec> specs;
  for (const ffi::Any& item : manifest[key].cast<json::Array>()) {
    auto entry = item.cast<json::Object>();
    TensorSpec spec{entry["name"].cast<ffi::String>(), {},
                    ffi::StringToDLDataType(entry["dtype"].cast<ffi::String>())};
    for (const ffi::Any& dim : entry["shape"].cast<json::Array>()) {
      spec.shape.push_back(dim.cast<int64_t>());
    }
    specs.push_back(spec);
  }
  return specs;
}

// Host memory for the inputs, aligned as TVM's kernels prefer.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) { t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) + 63) / 64 * 64); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

size_t NumBytes(const Tensor& t) { return ffi::GetDataSize(*t.GetDLTensorPtr()); }

const char* Data(const Tensor& t) { return static_cast<const char*>(t.data_ptr()) + t.byte_offset(); }

// The device an artifact runs on, from the manifest's target family.
DLDevice DeviceOf(const json::Object& manifest) {
  std::string family = manifest["family"].cast<ffi::String>();
  if (family == "cuda") return DLDevice{kDLCUDA, 0};
  if (family == "rocm") return DLDevice{kDLROCM, 0};
  return kHost;
}

// The wheel keeps each GPU runtime in a plugin of its own (libtvm_runtime_cuda.so links the CUDA
// driver, absent from CPU-only machines): load it, found through this program's rpath, for GPU
// artifacts only.
void LoadDeviceRuntime(DLDevice device) {
  if (device.device_type == kDLCPU) return;
  std::string plugin = device.device_type == kDLCUDA ? "libtvm_runtime_cuda.so" : "libtvm_runtime_rocm.so";
  if (dlopen(plugin.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    throw std::runtime_error("this artifact needs " + plugin + " from the apache-tvm wheel: " +
                             std::string(dlerror()));
  }
}

Tensor HostTensor(const std::vector<int64_t>& shape, DLDataType dtype) {
  return Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(shape), dtype, kHost);
}

// A copy of `t` on `device` (the runtime's allocator and copy, as tvm.runtime.tensor uses them).
Tensor CopyTo(const Tensor& t, DLDevice device) {
  static const ffi::Function alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
  static const ffi::Function copy = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromTo");
  std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  Tensor out = device.device_type == kDLCPU
                   ? HostTensor(shape, t.dtype())
                   : alloc(ffi::Shape(shape), t.dtype(), device, ffi::Optional<ffi::String>())
                         .cast<Tensor>();
  copy(t, out);
  return out;
}

Tensor MakeInput(const TensorSpec& spec, const std::string& dir) {
  Tensor t = HostTensor(spec.shape, spec.dtype);
  std::vector<char> bytes(NumBytes(t), 0);
  if (!dir.empty()) {
    std::string file = dir + "/" + spec.name + ".bin";
    std::ifstream in(file, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error("cannot read input " + file);
    if (static_cast<size_t>(in.tellg()) != bytes.size()) {
      throw std::runtime_error(file + " must hold " + std::to_string(bytes.size()) + " bytes");
    }
    in.seekg(0);
    in.read(bytes.data(), bytes.size());
  }
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

void Flatten(const ffi::Any& value, std::vector<Tensor>* out) {
  if (auto tensor = value.try_cast<Tensor>()) {
    out->push_back(*tensor);
  } else {
    for (const ffi::Any& field : value.cast<ffi::Array<ffi::Any>>()) Flatten(field, out);
  }
}

void Report(const TensorSpec& spec, const Tensor& t, const std::string& dir) {
  std::vector<char> bytes(Data(t), Data(t) + NumBytes(t));
  std::cout << spec.name << ": " << ffi::DLDataTypeToString(spec.dtype) << "[";
  for (size_t i = 0; i < spec.shape.size(); ++i) std::cout << (i ? "x" : "") << spec.shape[i];
  std::cout << "]";
  if (spec.dtype.code == kDLFloat && spec.dtype.bits == 32) {
    const float* v = reinterpret_cast<const float*>(bytes.data());
    size_t n = std::min<size_t>(bytes.size() / 4, 5);
    for (size_t i = 0; i < n; ++i) std::cout << (i ? ", " : " = ") << v[i];
    if (bytes.size() / 4 > n) std::cout << ", ...";
  }
  std::cout << "\n";
  if (!dir.empty()) {
    std::string file = dir + "/" + spec.name + ".bin";
    std::ofstream out(file, std::ios::binary);
    if (!out.write(bytes.data(), bytes.size())) throw std::runtime_error("cannot write " + file);
  }
}

int Run(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::cerr << "usage: " << argv[0] << " MODEL.so [--inputs DIR] [--outputs DIR] [--repeat N]\n";
    return 2;
  }
  // dlopen searches the library path for a bare file name; a path with a slash is opened as is.
  std::string library = std::string(argv[1]).find('/') == std::string::npos
                            ? "./" + std::string(argv[1]) : argv[1];
  std::string input_dir, output_dir;
  int repeat = 0;
  for (int i = 2; i < argc; i += 2) {
    std::string flag = argv[i];
    if (i + 1 == argc) throw std::runtime_error(flag + " needs a value");
    if (flag == "--inputs") input_dir = argv[i + 1];
    else if (flag == "--outputs") output_dir = argv[i + 1];
    else if (flag == "--repeat") repeat = std::stoi(argv[i + 1]);
    else throw std::runtime_error("unknown option " + flag);
  }
  json::Object manifest = ReadManifest(library);
  DLDevice device = DeviceOf(manifest);
  LoadDeviceRuntime(device);
  std::vector<TensorSpec> inputs = Specs(manifest, "inputs"), outputs = Specs(manifest, "outputs");

  ffi::Module executable = ffi::Module::LoadFromFile(library);
  ffi::Module vm = executable->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // A GPU artifact's VM also needs the host, where shape computations run.
  ffi::Function init = vm->GetFunction("vm_initialization").value();
  if (device.device_type == kDLCPU) {
    init(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  } else {
    init(static_cast<int>(device.device_type), device.device_id, kPooledAllocator,
         static_cast<int>(kDLCPU), 0, kPooledAllocator);
  }
  ffi::Function main_fn = vm->GetFunction("main").value();
  static const ffi::Function sync = ffi::Function::GetGlobalRequired("runtime.Device_StreamSync");

  std::vector<Tensor> args;
  for (const TensorSpec& spec : inputs) args.push_back(CopyTo(MakeInput(spec, input_dir), device));
  std::vector<ffi::AnyView> packed(args.begin(), args.end());
  ffi::Any result;
  main_fn.CallPacked(packed.data(), static_cast<int32_t>(packed.size()), &result);

  std::vector<Tensor> flat;
  Flatten(result, &flat);
  if (flat.size() != outputs.size()) throw std::runtime_error("output count differs from manifest");
  for (size_t i = 0; i < flat.size(); ++i) Report(outputs[i], CopyTo(flat[i], kHost), output_dir);

  if (repeat > 0) {
    std::vector<double> ms;
    for (int i = 0; i < repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      main_fn.CallPacked(packed.data(), static_cast<int32_t>(packed.size()), &result);
      if (device.device_type != kDLCPU) sync(device, int64_t{0});  // the GPU's work, not its launch
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    std::cout << "median latency: " << ms[ms.size() / 2] << " ms over " << repeat << " runs\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
