// charrnn's web runtime: one recurrent step of the exported model in plain JavaScript.
// The weights are the checkpoint's float32 numbers (Float32Array); the state is stored in
// float32 after every step; sums are accumulated in JavaScript's doubles. The equations,
// in torch's names and gate orders (see charrnn/model.py):
//   rnn:  h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
//   lstm: i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh)
//         c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c')
//   gru:  r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r gh_n), h' = (1-z) n + z h
//   logits = W_hy h'_top + b_y
"use strict";

const CharRNN = (() => {
  function decode(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer); // little-endian, as every browser is
  }

  // out[r] = bias[r] + W[r, :] · x  for a row-major W (rows, cols). Four running sums
  // let the CPU overlap the multiply-adds (about twice as fast in V8 as one sum).
  function matvec(w, rows, cols, x, bias, out) {
    const tail = cols & ~3;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let j = 0; j < tail; j += 4) {
        s0 += w[base + j] * x[j];
        s1 += w[base + j + 1] * x[j + 1];
        s2 += w[base + j + 2] * x[j + 2];
        s3 += w[base + j + 3] * x[j + 3];
      }
      for (let j = tail; j < cols; j++) s0 += w[base + j] * x[j];
      out[r] = bias[r] + ((s0 + s1) + (s2 + s3));
    }
  }

  const sigmoid = (z) => 1 / (1 + Math.exp(-z));

  class Stepper {
    constructor(model) {
      const cfg = model.config;
      this.kind = cfg.model;
      this.layers = cfg.num_layers;
      this.hidden = cfg.hidden_size;
      this.vocabSize = model.vocab.length;
      this.gates = { lstm: 4, gru: 3, rnn: 1 }[this.kind] * this.hidden;
      const all = decode(model.weights);
      this.w = {};
      for (const [name, [offset, shape]] of Object.entries(model.tensors)) {
        this.w[name] = all.subarray(offset, offset + shape.reduce((a, b) => a * b, 1));
      }
      this.embedSize = model.tensors.embed ? model.tensors.embed[1][1] : 0; // D of E (V, D)
      this.gi = new Float64Array(this.gates); // W_ih x + b_ih, one layer at a time
      this.gh = new Float64Array(this.gates); // W_hh h + b_hh
      this.logits = new Float64Array(this.vocabSize);
      this.reset();
    }

    reset() {
      const make = () => Array.from({ length: this.layers }, () => new Float32Array(this.hidden));
      this.h = make();
      this.c = this.kind === "lstm" ? make() : null;
    }

    // id of the current character -> logits of the next one; advances the state
    step(id) {
      const H = this.hidden, G = this.gates, w = this.w, gi = this.gi, gh = this.gh;
      let x = null;
      for (let k = 0; k < this.layers; k++) {
        if (k === 0 && w.table) {
          // one-hot x_t: W_ih x_t + b_ih is row id of the (V, G*H) table W_ih^T, plus b_ih
          const b = w.bias_ih_l0;
          for (let r = 0; r < G; r++) gi[r] = w.table[id * G + r] + b[r];
        } else {
          const D = this.embedSize;
          if (k === 0) x = w.embed.subarray(id * D, (id + 1) * D); // E x_t: row id of E^T
          matvec(w["weight_ih_l" + k], G, x.length, x, w["bias_ih_l" + k], gi);
        }
        const h = this.h[k];
        matvec(w["weight_hh_l" + k], G, H, h, w["bias_hh_l" + k], gh);
        if (this.kind === "rnn") {
          for (let j = 0; j < H; j++) h[j] = Math.tanh(gi[j] + gh[j]);
        } else if (this.kind === "lstm") {
          const c = this.c[k];
          for (let j = 0; j < H; j++) {
            const i = sigmoid(gi[j] + gh[j]);
            const f = sigmoid(gi[H + j] + gh[H + j]);
            const g = Math.tanh(gi[2 * H + j] + gh[2 * H + j]);
            const o = sigmoid(gi[3 * H + j] + gh[3 * H + j]);
            c[j] = f * c[j] + i * g;
            h[j] = o * Math.tanh(c[j]);
          }
        } else {
          for (let j = 0; j < H; j++) {
            const r = sigmoid(gi[j] + gh[j]);
            const z = sigmoid(gi[H + j] + gh[H + j]);
            const n = Math.tanh(gi[2 * H + j] + r * gh[2 * H + j]);
            h[j] = (1 - z) * n + z * h[j];
          }
        }
        x = h;
      }
      matvec(w.head_weight, this.vocabSize, H, x, w.head_bias, this.logits);
      return this.logits;
    }
  }

  // mulberry32: a small seeded generator of uniforms in [0, 1)
  function generator(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // One id from softmax(logits / temperature), as charrnn's sampler draws it: temperature 0
  // is argmax (the first of equal maxima), otherwise the inverse CDF at one uniform.
  function draw(logits, temperature, uniform) {
    let best = 0;
    for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
    if (!(temperature > 1e-30)) return best;
    const p = new Float64Array(logits.length);
    const top = logits[best] / temperature;
    let total = 0;
    for (let v = 0; v < logits.length; v++) {
      p[v] = Math.exp(logits[v] / temperature - top);
      total += p[v];
    }
    let target = uniform * total;
    for (let v = 0; v < logits.length; v++) {
      target -= p[v];
      if (target < 0) return v;
    }
    return logits.length - 1;
  }

  return { Stepper, generator, draw };
})();
