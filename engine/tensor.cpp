#include "engine/tensor.h"

#include <cstring>
#include <stdexcept>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/kernels.h"

namespace engine {

void fail(const std::string& message) { throw std::runtime_error(message); }

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::i32: return 4;
    case DType::u8: return 1;
    case DType::i8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
    case DType::i8: return "i8";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

Shape::Shape(std::initializer_list<int64_t> dims) {
  ENGINE_CHECK(dims.size() <= max_dims, "at most 5 dims");
  for (int64_t v : dims) d[n++] = v;
}

Shape::Shape(const std::vector<int64_t>& dims) {
  ENGINE_CHECK(dims.size() <= max_dims, "at most 5 dims");
  for (int64_t v : dims) d[n++] = v;
}

int64_t Shape::numel() const {
  int64_t p = 1;
  for (int i = 0; i < n; i++) p *= d[i];
  return p;
}

bool Shape::operator==(const Shape& o) const {
  if (n != o.n) return false;
  for (int i = 0; i < n; i++)
    if (d[i] != o.d[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < n; i++) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

Storage::Storage(size_t bytes_, Device device_) : bytes(bytes_), device(device_) {
  data = device_alloc(bytes, device);
}
Storage::~Storage() { device_free(data, bytes, device); }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int i = 0; i < shape.n; i++) ENGINE_CHECK(shape.d[i] >= 0, "negative size in " + shape.str());
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = dtype;
  impl->storage = std::make_shared<Storage>(shape.numel() * dtype_size(dtype), device);
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::cpu) std::memset(t.raw(), 0, t.nbytes());
  else t.fill_(0.0f);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, Device device) {
  Tensor t = empty(shape, DType::f32, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  ENGINE_CHECK((int64_t)values.size() == shape.numel(),
               std::to_string(values.size()) + " values for shape " + shape.str());
  Tensor t = empty(shape);
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  std::string s = std::string(dtype_name(dtype())) + shape().str() + " " + device_name(device());
  return channel_block() ? s + " nChw" + std::to_string(channel_block()) + "c" : s;
}

template <class T> static constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<int8_t>() { return DType::i8; }

template <class T> T* Tensor::data() const {
  ENGINE_CHECK(defined(), "undefined tensor");
  ENGINE_CHECK(dtype() == dtype_of<T>(), std::string("tensor is ") + dtype_name(dtype()) + ", asked for " +
                                             dtype_name(dtype_of<T>()));
  ENGINE_CHECK(channel_block() == 0, "the storage of " + str() + " is blocked (engine/ops.h, the activation layout): "
                                     "read its values with to_vector(), or make it NCHW with to_plain()");
  return static_cast<T*>(impl_->storage->data);
}
template float* Tensor::data<float>() const;
template int32_t* Tensor::data<int32_t>() const;
template uint8_t* Tensor::data<uint8_t>() const;
template int8_t* Tensor::data<int8_t>() const;

float* Tensor::storage_f32() const {
  ENGINE_CHECK(defined() && dtype() == DType::f32, "storage_f32 of " + (defined() ? str() : std::string("undefined")));
  return static_cast<float*>(impl_->storage->data);
}

// A row-major copy of t (same shape and values).
static Tensor clone_plain(const Tensor& t) {
  Tensor p = Tensor::empty(t.shape(), t.dtype(), t.device());
  p.copy_(t);
  return p;
}

float Tensor::item() const {
  ENGINE_CHECK(numel() == 1, "item() of a tensor with " + std::to_string(numel()) + " elements");
  return to_vector()[0];
}

std::vector<float> Tensor::to_vector() const {
  Tensor host = to(Device::cpu);
  if (host.channel_block()) host = clone_plain(host);
  const float* p = host.f32();
  return std::vector<float>(p, p + numel());
}

Tensor& Tensor::requires_grad_(bool on) {
  ENGINE_CHECK(!on || dtype() == DType::f32, "only f32 tensors can require grad");
  ENGINE_CHECK(!on || !frozen(), str() + " is frozen (a constant for inference): it cannot require grad");
  impl_->requires_grad = on;
  return *this;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = impl_->shape;
  impl->dtype = impl_->dtype;
  impl->storage = impl_->storage;
  impl->channel_block = impl_->channel_block;
  return Tensor(std::move(impl));
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), dtype(), device());
  t.impl()->channel_block = channel_block();
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device target) const {
  if (device() == target) return *this;
  if (channel_block()) return clone_plain(*this).to(target);  // the blocked layout is the CPU's
  Tensor t = empty(shape(), dtype(), target);
  if (target == Device::cuda) cuda::copy_to_device(t.raw(), raw(), nbytes());
  else cuda::copy_to_host(t.raw(), raw(), nbytes());
  return t;
}

Tensor& Tensor::freeze_() {
  impl_->requires_grad = false;
  impl_->grad.reset();
  impl_->storage->frozen = true;
  return *this;
}

void Tensor::copy_(const Tensor& src) {
  ENGINE_CHECK(!frozen(), "copy_ into " + str() + ", which is frozen (a constant for inference)");
  ENGINE_CHECK(numel() == src.numel() && dtype() == src.dtype(),
               "copy_ from " + src.str() + " into " + str());
  if (channel_block() != src.channel_block()) {
    ENGINE_CHECK(shape() == src.shape() && device() == Device::cpu && src.device() == Device::cpu,
                 "copy_ between layouts needs one shape on the CPU: from " + src.str() + " into " + str());
    const int64_t hw = size(2) * size(3);
    if (src.channel_block() == 0) cpu::channels_to_blocked(size(0), size(1), hw, channel_block(), src.storage_f32(), storage_f32());
    else if (channel_block() == 0) cpu::channels_from_blocked(size(0), size(1), hw, src.channel_block(), src.storage_f32(), storage_f32());
    else copy_(clone_plain(src));
    return;
  }
  if (device() == src.device()) copy_bytes(device(), raw(), src.raw(), nbytes());
  else if (device() == Device::cuda) cuda::copy_to_device(raw(), src.raw(), nbytes());
  else cuda::copy_to_host(raw(), src.raw(), nbytes());
}

void copy_bytes(Device device, void* dst, const void* src, size_t bytes) {
  if (device == Device::cpu) std::memcpy(dst, src, bytes);
  else cuda::copy_on_device(dst, src, bytes);
}

Tensor view_as_shape(const Tensor& t, const Shape& shape) {
  ENGINE_CHECK(shape.numel() == t.numel(), "cannot view " + t.shape().str() + " as " + shape.str());
  ENGINE_CHECK(t.channel_block() == 0, "cannot view the blocked " + t.str() + " as " + shape.str());
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = t.dtype();
  impl->storage = t.impl()->storage;
  return Tensor(std::move(impl));
}

Tensor empty_like(const Tensor& x) {
  Tensor t = Tensor::empty(x.shape(), DType::f32, x.device());
  t.impl()->channel_block = x.channel_block();
  return t;
}

}  // namespace engine
