// Tensor: a shape (up to 5 dims), contiguous storage, a dtype and a device, plus the autograd fields
// (requires_grad, grad, grad_fn). Copies between devices are explicit: `to(device)`.
// The storage is row-major (NCHW) unless the tensor is a CPU activation [N, C, H, W] whose channels the
// engine blocked for oneDNN (channel_block() > 0; ops.h, "the activation layout"): the shape is the same
// either way, as torch's memory_format, and to_vector() gives the values in row-major order.
// Tensors are handles: copying a Tensor shares its storage and autograd state (like torch.Tensor).
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace engine {

enum class DType : uint8_t { f32, u8, i8, i32 };
enum class Device : uint8_t { cpu, cuda };
size_t dtype_size(DType);
const char* dtype_name(DType);
const char* device_name(Device);

// A shape of at most 5 dims, held inline so that shapes never allocate.
struct Shape {
  static constexpr int max_dims = 5;
  int64_t d[max_dims] = {};
  int n = 0;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);
  int64_t operator[](int i) const { return d[i < 0 ? i + n : i]; }
  int64_t& operator[](int i) { return d[i < 0 ? i + n : i]; }
  int size() const { return n; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::vector<int64_t> vec() const { return std::vector<int64_t>(d, d + n); }
  std::string str() const;  // "[2, 3, 4]"
};

// Bytes of one device, from the caching allocator; freed back to it when the last tensor lets go.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  // A constant (Tensor::freeze_): its values never change again, so kernels may keep forms they derive
  // from them in `derived` (the CPU convolutions' weights in oneDNN's layout, our Winograd's transformed
  // kernels: engine/cpu/frozen.h), made on first use and freed with the storage.
  bool frozen = false;
  std::shared_ptr<void> derived;
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor;
struct Node;

struct TensorImpl {
  Shape shape;
  DType dtype = DType::f32;
  std::shared_ptr<Storage> storage;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // same shape as this tensor, f32
  std::shared_ptr<Node> grad_fn;     // the op that produced this tensor (null for leaves)
  int64_t channel_block = 0;         // 0: row-major; B: [N, C, H, W] stored as [N, C/B, H, W, B] (ops.h)
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- factories -----------------------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor full(const Shape& shape, float value, Device device = Device::cpu);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor scalar(float value) { return full(Shape{}, value); }

  // --- metadata ------------------------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl_->shape; }
  int dim() const { return impl_->shape.n; }
  int64_t size(int d) const { return impl_->shape[d]; }
  int64_t numel() const { return impl_->shape.numel(); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  size_t nbytes() const { return numel() * dtype_size(dtype()); }
  std::string str() const;  // "f32[2, 3] cpu", "f32[2, 32, 4, 4] cpu nChw16c"
  int64_t channel_block() const { return impl_->channel_block; }  // 0 unless blocked (ops.h)

  // --- data (host pointers only for cpu tensors; checks the dtype) ----------------------------------
  // Row-major tensors only: a blocked one (channel_block() > 0) is refused, since its storage is not in
  // the order of its shape; to_vector() gives any tensor's values in row-major order.
  template <class T> T* data() const;
  float* f32() const { return data<float>(); }
  // The f32 storage as it is, in either layout: for the engine's ops, which know the layout.
  float* storage_f32() const;
  void* raw() const { return impl_->storage->data; }
  float item() const;                     // a one-element f32 tensor's value
  std::vector<float> to_vector() const;   // f32 values, copied to the host

  // --- autograd --------------------------------------------------------------------------------------
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& requires_grad_(bool on = true);
  Tensor grad() const { return Tensor(impl_->grad); }
  void set_grad(const Tensor& g) { impl_->grad = g.impl_; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  void backward() const;                  // this is a one-element loss: d(this)/d(leaves) into .grad
  Tensor detach() const;                  // same storage, no autograd history

  // --- constants (inference) -------------------------------------------------------------------------
  // Makes the values a constant for good (no gradient; copy_, fill_, an optimizer step and
  // requires_grad_ fail on it), so that kernels may keep what they derive from it across calls, as
  // torch.jit.freeze and onnxruntime's prepacking do. Writing it through a raw pointer (data()) is a bug
  // the engine cannot see: the derived forms would go stale. layers::Module::freeze freezes a model.
  Tensor& freeze_();
  bool frozen() const { return impl_->storage->frozen; }

  // --- copies ----------------------------------------------------------------------------------------
  Tensor clone() const;                   // a new storage with the same values and layout (no history)
  Tensor to(Device device) const;         // an explicit copy to another device (itself if already there)
  // values of src (same numel and dtype) into this storage, in this tensor's layout
  void copy_(const Tensor& src);
  void fill_(float value);                // f32 only

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// A tensor that shares `t`'s storage with another shape of the same numel (no autograd; see ops.h reshape).
// t must be row-major.
Tensor view_as_shape(const Tensor& t, const Shape& shape);
// An uninitialized f32 tensor of x's shape, device and layout.
Tensor empty_like(const Tensor& x);
// Copies `bytes` from src to dst, both on `device` (memcpy, or on the CUDA stream).
void copy_bytes(Device device, void* dst, const void* src, size_t bytes);

[[noreturn]] void fail(const std::string& message);  // throws std::runtime_error
#define ENGINE_CHECK(cond, msg)                                         \
  do {                                                                  \
    if (!(cond)) ::engine::fail(std::string(__func__) + ": " + (msg));  \
  } while (0)

}  // namespace engine
