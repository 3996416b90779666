#include "fastattn/outputs.h"

#include <cstdlib>
#include <cstring>

namespace fastattn {

bool poison_outputs() {
  static const bool enabled = [] {
    const char* value = std::getenv("FASTATTN_POISON_OUTPUTS");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

}  // namespace fastattn
