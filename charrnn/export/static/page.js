// The page: read the controls (or the address's ?seed=&length=&temperature=&random_seed=),
// then generate in slices, so that the text streams in and Stop is heard between slices.
"use strict";

(() => {
  const model = window.CHARRNN_MODEL;
  const $ = (id) => document.getElementById(id);
  const output = $("output"), status = $("status");
  const index = new Map(model.vocab.map((c, i) => [c, i]));
  const stepper = new CharRNN.Stepper(model);
  const SLICE_CHARS = 64; // at most this many characters between two paints
  const SLICE_MS = 30; // ... or this long
  let running = null;

  const cfg = model.config;
  $("about").textContent = `${cfg.model.toUpperCase()} ${cfg.num_layers}×${cfg.hidden_size}, ` +
    `${model.vocab.length} characters, from ${model.source}. Runs in this page; nothing is sent anywhere.`;

  function finish(run, why) {
    const seconds = (performance.now() - run.start) / 1000;
    const rate = seconds > 0 ? Math.round(run.generated / seconds) : 0;
    output.dataset.charsPerSecond = String(rate);
    output.dataset.done = "yes";
    status.textContent = `${run.generated} characters, ${rate} characters/s${why ? " (" + why + ")" : ""}`;
    $("generate").disabled = false;
    $("stop").disabled = true;
    running = null;
  }

  function generate(seed, length, temperature, randomSeed) {
    if (running) running.stopped = true;
    output.textContent = "";
    delete output.dataset.done;
    const unknown = [...new Set([...seed].filter((c) => !index.has(c)))];
    if (!seed || unknown.length) {
      status.textContent = seed ? `The seed has characters the model never saw: ${JSON.stringify(unknown.join(""))}`
        : "Give a seed of at least one character.";
      output.dataset.error = "seed";
      return;
    }
    delete output.dataset.error;
    const seedNumber = Number.isInteger(randomSeed) ? randomSeed : crypto.getRandomValues(new Uint32Array(1))[0];
    const uniform = CharRNN.generator(seedNumber);
    const run = { stopped: false, generated: 0, start: performance.now() };
    running = run;
    $("generate").disabled = true;
    $("stop").disabled = false;
    output.append(seed);
    stepper.reset();
    let logits;
    for (const c of seed) logits = stepper.step(index.get(c)); // the seed warms the state up
    const slice = () => {
      if (run.stopped) return finish(run, "stopped");
      const until = performance.now() + SLICE_MS;
      let text = "";
      for (let n = 0; n < SLICE_CHARS && performance.now() < until; n++) {
        if (length && run.generated >= length) break;
        const id = CharRNN.draw(logits, temperature, uniform());
        text += model.vocab[id];
        run.generated++;
        if (!length || run.generated < length) logits = stepper.step(id);
      }
      output.append(text);
      if (length && run.generated >= length) return finish(run, "");
      setTimeout(slice, 0);
    };
    slice();
  }

  function fromControls() {
    const randomSeed = $("random-seed").value === "" ? null : Number($("random-seed").value);
    generate($("seed").value, Math.max(0, Number($("length").value) | 0), Number($("temperature").value), randomSeed);
  }

  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
  $("generate").addEventListener("click", fromControls);
  $("stop").addEventListener("click", () => { if (running) running.stopped = true; });

  const q = new URLSearchParams(location.search);
  $("seed").value = q.has("seed") ? q.get("seed") : model.default_seed;
  if (q.has("length")) $("length").value = q.get("length");
  if (q.has("temperature")) $("temperature").value = q.get("temperature");
  $("temperature-value").textContent = q.get("temperature") ?? $("temperature").value;
  if (q.has("random_seed")) $("random-seed").value = q.get("random_seed");
  if (q.has("seed")) {
    // From the address: start at once, with the exact numbers given (the range control
    // would round the temperature to its step).
    const t = q.has("temperature") ? Number(q.get("temperature")) : Number($("temperature").value);
    const rs = q.has("random_seed") ? Number(q.get("random_seed")) : null;
    generate(q.get("seed"), Math.max(0, Number($("length").value) | 0), t, rs);
  }
})();
