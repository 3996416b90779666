#pragma once

// Masked-softmax math for one attention row, shared by the CPU and CUDA kernels.
//
// A row is reduced to its log-sum-exp (lse) over the keys it may attend to, in two
// passes: the largest logit, then the sum of exp(logit - largest). Every probability is
// then exp(logit - lse). A row with no key gets lse = +inf, which makes every probability,
// and so the output and every gradient of that row, exactly 0.

#include <math.h>

#include "fastattn/host_device.h"

namespace fastattn::math {

FASTATTN_HOST_DEVICE float exp_(float x) { return expf(x); }
FASTATTN_HOST_DEVICE double exp_(double x) { return exp(x); }
FASTATTN_HOST_DEVICE float log_(float x) { return logf(x); }
FASTATTN_HOST_DEVICE double log_(double x) { return log(x); }

template <class acc_t>
FASTATTN_HOST_DEVICE acc_t infinity() { return static_cast<acc_t>(INFINITY); }

// The larger of two logits; -inf stands for "no key yet".
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t max_(acc_t a, acc_t b) { return a > b ? a : b; }

// A key's term of the second pass, exp(logit - row_max); 0 for a row with no key
// (row_max = -inf), where logit - row_max would be NaN.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t shifted_exp(acc_t logit, acc_t row_max) {
  return row_max == -infinity<acc_t>() ? acc_t(0) : exp_(logit - row_max);
}

// log(sum_j exp(logit_j)) from the two passes; +inf for a row with no key.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_lse(acc_t row_max, acc_t sum_shifted_exp) {
  return sum_shifted_exp > acc_t(0) ? row_max + log_(sum_shifted_exp) : infinity<acc_t>();
}

// Probability of a key the row may attend to; 0 for every key of a row with no key.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_prob(acc_t logit, acc_t lse) {
  return lse == infinity<acc_t>() ? acc_t(0) : exp_(logit - lse);
}

// The same probability from the key's shifted_exp term and the row's sum of them, for a
// kernel that kept the terms: one exp per key instead of two.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_prob_from_terms(acc_t shifted_exp_term, acc_t sum_shifted_exp) {
  return sum_shifted_exp > acc_t(0) ? shifted_exp_term / sum_shifted_exp : acc_t(0);
}

// Gradient of one logit: p * (dL/dp - delta), where delta = sum_k p_k dL/dp_k equals the
// dot product of the output row with its gradient.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_logit_grad(acc_t prob, acc_t grad_prob, acc_t delta) {
  return prob * (grad_prob - delta);
}

}  // namespace fastattn::math
