#pragma once

// Asymmetric transforms for maximum-inner-product search (SPEC section 1), per vector,
// shared by the CPU and CUDA kernels.
//
// Every transform maps x (D coordinates) to [scale * x; extra_0 .. extra_{e-1}], where the
// scale and the extras depend only on ||x||^2 and the per-(batch, head) maxima M^2 (of the
// squared key norms) and Mq^2 (of the squared query norms). So a kernel needs ||x||^2
// first, then this header, then one pass over x.
//
// M^2 must be the largest of the very values ||x||^2 the rows use (one reduction, computed
// once): then the largest key's M^2 - ||x||^2 is exactly 0 and its ||x||^2 / M^2 exactly 1,
// so its appended coordinate is exactly 0. A norm taken by another reduction would leave
// sqrt(rounding) there, about sqrt(eps) * M, enough to flip code bits in float32.

#include <math.h>

#include "fastattn/host_device.h"

namespace fastattn::mips {

enum class Scheme : int { SignAlsh = 0, Xbox = 1, XboxQnf = 2, SimpleLsh = 3, SimpleAlsh = 4 };
enum class Role : int { Query = 0, Key = 1 };

constexpr int kMaxExtra = 8;  // sign_alsh's m is at most this

// e, the coordinates a scheme appends.
FASTATTN_HOST_DEVICE int extra_dims(Scheme scheme, int m) {
  switch (scheme) {
    case Scheme::SignAlsh: return m;
    case Scheme::SimpleAlsh: return 2;
    default: return 1;
  }
}

template <class acc_t>
FASTATTN_HOST_DEVICE acc_t sqrt_clamped(acc_t x) { return x > acc_t(0) ? sqrt(x) : acc_t(0); }

// x / n, or 0 when n is 0 (a zero vector, or no key to take a norm from).
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t safe_inverse(acc_t n) { return n > acc_t(0) ? acc_t(1) / n : acc_t(0); }

// sqrt(1 - ||y||^2) for y = x / sqrt(max_sq), from the squares: exactly 0 where
// sq_norm == max_sq. With max_sq = 0, y is 0 (safe_inverse) and the result 1.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t sqrt_one_minus_ratio(acc_t sq_norm, acc_t max_sq) {
  return max_sq > acc_t(0) ? sqrt_clamped(acc_t(1) - sq_norm / max_sq) : acc_t(1);
}

// Fills extra[0 .. e) and returns the scale of x's own coordinates.
//   sq_norm: ||x||^2; key_max_sq: M^2; query_max_sq: Mq^2; U and m: sign_alsh's parameters.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t transform_coefficients(Scheme scheme, Role role, acc_t sq_norm, acc_t key_max_sq,
                                                  acc_t query_max_sq, acc_t U, int m, acc_t* extra) {
  if (!(sq_norm > acc_t(0))) {  // SPEC: a zero vector maps to zeros, whatever the scheme
    for (int r = 0; r < extra_dims(scheme, m); ++r) extra[r] = 0;
    return acc_t(0);
  }
  const acc_t norm = sqrt_clamped(sq_norm);
  if (role == Role::Query) {
    switch (scheme) {
      case Scheme::SignAlsh:
        for (int r = 0; r < m; ++r) extra[r] = 0;
        return safe_inverse(norm);
      case Scheme::Xbox:
        extra[0] = 0;
        return acc_t(1);
      case Scheme::XboxQnf:
        extra[0] = 0;
        return sqrt_clamped(key_max_sq) * safe_inverse(norm);
      case Scheme::SimpleLsh:
        extra[0] = 0;
        return safe_inverse(norm);
      case Scheme::SimpleAlsh:
        extra[0] = 0;
        extra[1] = sqrt_one_minus_ratio(sq_norm, query_max_sq);
        return safe_inverse(sqrt_clamped(query_max_sq));
    }
  }
  switch (scheme) {
    case Scheme::SignAlsh: {
      // x = U k / M; extras 1/2 - ||x||^2, 1/2 - ||x||^4, ..., 1/2 - ||x||^(2^m)
      const acc_t scale = U * safe_inverse(sqrt_clamped(key_max_sq));
      acc_t power = key_max_sq > acc_t(0) ? U * U * (sq_norm / key_max_sq) : acc_t(0);
      for (int r = 0; r < m; ++r) {
        extra[r] = acc_t(0.5) - power;
        power *= power;
      }
      return scale;
    }
    case Scheme::Xbox:
    case Scheme::XboxQnf:
      extra[0] = sqrt_clamped(key_max_sq - sq_norm);
      return acc_t(1);
    case Scheme::SimpleLsh:
    case Scheme::SimpleAlsh:
      extra[0] = sqrt_one_minus_ratio(sq_norm, key_max_sq);
      if (scheme == Scheme::SimpleAlsh) extra[1] = 0;
      return safe_inverse(sqrt_clamped(key_max_sq));
  }
  return acc_t(0);
}

}  // namespace fastattn::mips
