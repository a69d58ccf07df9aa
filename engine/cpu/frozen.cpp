// The forms kept with a frozen tensor's storage (frozen.h).
#include "engine/cpu/frozen.h"

#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

namespace engine::cpu {

namespace {

struct Form {
  FormKey key;
  std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};
};

// Storage::derived of a CPU tensor: a std::vector<Form>.
using Forms = std::vector<Form>;

// Guards every storage's forms: a lookup is a few comparisons, and a form is made once.
std::mutex g_forms_mutex;

}  // namespace

void* derived_form(Storage& s, const FormKey& key, size_t bytes, void (*make)(void* buffer, const void* arg),
                   const void* arg) {
  ENGINE_CHECK(s.frozen, "derived forms of a storage that is not frozen");
  std::lock_guard<std::mutex> lock(g_forms_mutex);
  if (!s.derived) s.derived = std::make_shared<Forms>();
  Forms& forms = *static_cast<Forms*>(s.derived.get());
  for (Form& form : forms)
    if (form.key.tag == key.tag && form.key.layout == key.layout) return form.data.get();
  Form form{key};
  form.data.reset(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  ENGINE_CHECK(form.data, "out of memory for " + std::to_string(bytes) + " bytes of a frozen tensor's form");
  make(form.data.get(), arg);
  forms.push_back(std::move(form));
  return forms.back().data.get();
}

int derived_forms(const Storage& s) {
  std::lock_guard<std::mutex> lock(g_forms_mutex);
  return s.derived ? (int)static_cast<Forms*>(s.derived.get())->size() : 0;
}

}  // namespace engine::cpu
