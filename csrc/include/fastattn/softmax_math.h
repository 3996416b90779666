#pragma once

// Masked-softmax math for one attention row, shared by CPU and CUDA kernels.
//
// A row is reduced to its log-sum-exp (lse) over the keys it may attend to; every
// probability is then exp(logit - lse). A row with no key gets lse = +inf, which makes
// every probability, and so the output and every gradient of that row, exactly 0.

#include <math.h>

#include "fastattn/host_device.h"

namespace fastattn::math {

FASTATTN_HOST_DEVICE float exp_(float x) { return expf(x); }
FASTATTN_HOST_DEVICE double exp_(double x) { return exp(x); }
FASTATTN_HOST_DEVICE float log_(float x) { return logf(x); }
FASTATTN_HOST_DEVICE double log_(double x) { return log(x); }

template <class acc_t>
FASTATTN_HOST_DEVICE acc_t infinity() { return static_cast<acc_t>(INFINITY); }

// Running maximum and sum of exp(logit - max) over the keys seen so far
// (the online softmax of Milakov and Gimelshein, 2018).
template <class acc_t>
struct SoftmaxState {
  acc_t max = -infinity<acc_t>();
  acc_t sum = 0;
};

// Adds one key's logit to the row.
template <class acc_t>
FASTATTN_HOST_DEVICE void softmax_add(SoftmaxState<acc_t>& state, acc_t logit) {
  if (logit == -infinity<acc_t>()) return;  // weight 0; and -inf - -inf would be NaN
  if (logit > state.max) {
    state.sum = state.sum * exp_(state.max - logit) + acc_t(1);
    state.max = logit;
  } else {
    state.sum += exp_(logit - state.max);
  }
}

// Merges the states of two disjoint sets of keys (for parallel reductions).
template <class acc_t>
FASTATTN_HOST_DEVICE SoftmaxState<acc_t> softmax_merge(SoftmaxState<acc_t> a, SoftmaxState<acc_t> b) {
  if (b.max == -infinity<acc_t>()) return a;
  if (a.max == -infinity<acc_t>()) return b;
  const acc_t max = a.max > b.max ? a.max : b.max;
  return {max, a.sum * exp_(a.max - max) + b.sum * exp_(b.max - max)};
}

// log(sum_j exp(logit_j)), or +inf for a row with no key.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_lse(SoftmaxState<acc_t> state) {
  return state.sum > acc_t(0) ? state.max + log_(state.sum) : infinity<acc_t>();
}

// Probability of a key that the row may attend to; 0 for every key of a row with no key.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_prob(acc_t logit, acc_t lse) {
  return lse == infinity<acc_t>() ? acc_t(0) : exp_(logit - lse);
}

// Gradient of one logit: p * (dL/dp - sum_k p_k dL/dp_k), where the sum (delta) equals
// the dot product of the output row with its gradient.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t softmax_logit_grad(acc_t prob, acc_t grad_prob, acc_t delta) {
  return prob * (grad_prob - delta);
}

}  // namespace fastattn::math
