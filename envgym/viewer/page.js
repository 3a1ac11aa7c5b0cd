"use strict";
// The envgym view page: draws the JSON embedded in #envgym-data (see envgym/viewer/__init__.py for its shape).
// Text from episodes is only ever set as textContent, never parsed as HTML.

const DATA = JSON.parse(document.getElementById("envgym-data").textContent);
const FIELD = Object.fromEntries(DATA.turn_fields.map((name, i) => [name, i]));
const STR = DATA.strings, SEQ = DATA.id_seqs, VOCAB = DATA.vocab;
const RUN = DATA.run, EVAL = DATA.eval;
const CONFIG = (RUN && RUN.config) || {};
const CLIP = [(CONFIG.loss && CONFIG.loss.clip_low) || 0.2, (CONFIG.loss && CONFIG.loss.clip_high) || 0.2];
const SAMPLES = [...((RUN && RUN.samples) || []).map(s => ({...s, kind: "run"})),
                 ...((EVAL && EVAL.samples) || []).map(s => ({...s, kind: "eval"}))];
const state = {sample: null, group: null, episode: null, turn: null};
const $ = id => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "title") node.title = value;
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const isNum = x => typeof x === "number" && Number.isFinite(x);
const isBad = x => typeof x === "string" && /^(nan|inf|-inf)$/.test(x);

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "boolean") return x ? "yes" : "no";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  return x.toFixed(digits);
}

const pct = x => isNum(x) ? (100 * x).toFixed(1) + "%" : fmt(x);

function turnOf(row) {
  const t = {};
  for (const [name, i] of Object.entries(FIELD)) t[name] = row[i];
  return t;
}

function advColour(adv, scale) {
  if (!isNum(adv) || !scale || adv === 0) return "transparent";
  const alpha = 0.1 + 0.75 * Math.min(1, Math.abs(adv) / scale);
  return `rgba(var(${adv >= 0 ? "--pos" : "--neg"}), ${alpha.toFixed(3)})`;
}

const anchorColour = i => `hsl(${(i * 137.508) % 360}, 70%, 76%)`;
const visible = text => text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·");

// ------------------------------------------------------------------------------------------- header

function drawHeader() {
  $("title").textContent = `envgym view · ${DATA.title}`;
  document.title = `envgym view · ${DATA.title}`;
  $("subtitle").textContent = `${DATA.source} · page written ${DATA.created}`;
  const chips = [];
  const chip = (text, warn) => chips.push(el("span", {class: warn ? "chip warn" : "chip"}, text));
  if (RUN) {
    chip("training run");
    if (CONFIG.env) chip(`env ${CONFIG.env.id}`);
    if (CONFIG.algorithm) chip(`estimator ${CONFIG.algorithm.estimator}`);
    if (CONFIG.model) chip(`model ${CONFIG.model.name}`);
    const rl = RUN.metrics.filter(m => m.phase === "rl");
    chip(`${rl.length} iterations logged`);
    chip(`${RUN.samples.length} samples stored`);
    const failures = RUN.samples.reduce((n, s) => n + s.failures.length, 0);
    if (failures) chip(`${failures} failed episode attempts`, true);
    const bad = RUN.metrics.filter(m => Object.values(m).some(isBad)).length;
    if (bad) chip(`${bad} iterations with NaN/inf metrics`, true);
  }
  if (EVAL) chip(`evaluation: ${EVAL.results.length} env × policy rows`);
  $("chips").replaceChildren(...chips);
}

// ------------------------------------------------------------------------------------------- learning curve

function metricKeys() {
  const keys = new Set();
  for (const m of RUN.metrics) for (const [k, v] of Object.entries(m)) if (isNum(v) && k !== "iteration") keys.add(k);
  return [...keys].sort();
}

function drawCurvePicker() {
  const keys = metricKeys();
  const options = [el("option", {value: "success"}, "success (train and held-out)"),
                   ...keys.map(k => el("option", {value: k}, k))];
  $("metric").replaceChildren(...options);
  $("metric").addEventListener("change", drawCurve);
  drawCurve();
}

function curveSeries(metric) {
  const rl = RUN.metrics.filter(m => m.phase === "rl" || m.phase === undefined);
  const points = key => rl.filter(m => isNum(m[key])).map(m => [m.iteration, m[key]]);
  if (metric !== "success") return [{name: metric, points: points(metric), colour: "#2f6fdf", line: true, dots: true}];
  const before = RUN.metrics.filter(m => m.phase !== "rl" && m.phase !== undefined && isNum(m["eval/success"]));
  const start = before.slice(-1).map(m => [m.iteration, m["eval/success"]]);  // the held-out line starts where RL did
  const series = [{name: "train (sampled)", points: points("train/success"), colour: "#7d8597", line: true, dots: false},
                  {name: "held-out", points: [...start, ...points("eval/success")], colour: "#2f6fdf", line: true,
                   dots: true}];
  for (const [phase, colour] of [["init", "#222"], ["sft", "#e07b00"]]) {
    const at = before.filter(m => m.phase === phase);
    if (at.length) series.push({name: `held-out (${phase})`, points: at.map(m => [m.iteration, m["eval/success"]]),
                                colour, line: false, dots: true});
  }
  return series;
}

function drawCurve() {
  const metric = $("metric").value;
  const series = curveSeries(metric).filter(s => s.points.length);
  const W = 900, H = 250, L = 52, R = 16, T = 14, B = 30;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", "100%");
  svg.style.maxWidth = W + "px";
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const all = series.flatMap(s => s.points);
  const stored = SAMPLES.filter(s => s.kind === "run").map(s => s.iteration);
  if (!all.length) {
    $("curve").replaceChildren(el("div", {class: "empty"}, `no finite values of ${metric} logged`));
    return;
  }
  const xs = [...all.map(p => p[0]), ...stored];
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) x1 = x0 + 1;
  let [y0, y1] = metric === "success" ? [0, 1] : [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const pad = metric === "success" ? 0 : (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    add("line", {x1: L, x2: W - R, y1: Y(y), y2: Y(y), stroke: "#e4e7ec"});
    add("text", {x: L - 6, y: Y(y) + 4, "text-anchor": "end"}, fmt(y, 2));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step) add("text", {x: X(x), y: H - 12, "text-anchor": "middle"}, x);
  add("text", {x: W - R, y: H - 1, "text-anchor": "end"}, "iteration");
  for (const it of stored) {  // stored samples: ticks on the axis, clickable
    const tick = add("rect", {x: X(it) - 2, y: H - B + 1, width: 4, height: 7, fill: "#2f6fdf", cursor: "pointer",
                              "data-iteration": it});
    tick.addEventListener("click", () => openIteration(it));
    tick.append(Object.assign(document.createElementNS(NS, "title"), {textContent: `iteration ${it}: stored episodes`}));
  }
  series.forEach((s, k) => {
    if (s.line && s.points.length > 1) {
      add("polyline", {points: s.points.map(p => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: s.colour,
                       "stroke-width": 1.8});
    }
    for (const [x, y] of s.points) {
      const dot = add("circle", {cx: X(x), cy: Y(y), r: s.dots ? 3.6 : 2.2, fill: s.colour, cursor: "pointer",
                                 class: "point", "data-iteration": x});
      dot.append(Object.assign(document.createElementNS(NS, "title"), {textContent: `${s.name} · iteration ${x}: ${fmt(y, 4)}`}));
      dot.addEventListener("click", () => openIteration(x));
    }
    add("rect", {x: L + 10 + k * 170, y: T, width: 10, height: 10, fill: s.colour});
    add("text", {x: L + 24 + k * 170, y: T + 9}, s.name);
  });
  $("curve").replaceChildren(svg);
}

// ------------------------------------------------------------------------------------------- iteration table

const ITERATION_COLUMNS = [
  ["iteration", "iter"], ["phase", "phase"], ["train/success", "train success"], ["eval/success", "held-out"],
  ["train/return", "return"], ["train/turns", "turns"], ["train/invalid_rate", "invalid"], ["adv/std", "adv std"],
  ["adv/abs_max", "|adv| max"], ["loss/entropy", "entropy"], ["loss/kl", "KL"], ["loss/clip_fraction", "clipped"],
  ["loss/ratio", "ratio"], ["loss/grad_norm", "grad norm"], ["rollout/dropped_groups", "dropped groups"],
  ["time/iteration", "s / iter"]];

function drawIterations() {
  const metrics = RUN.metrics;
  const extra = [...new Set(metrics.flatMap(Object.keys))].filter(k => /^(prm|info_gain)\//.test(k)).sort();
  const columns = [...ITERATION_COLUMNS.filter(([k]) => metrics.some(m => k in m)), ...extra.map(k => [k, k])];
  const byIteration = new Map(SAMPLES.filter(s => s.kind === "run").map((s, i) => [s.iteration, s]));
  const head = el("tr", {}, columns.map(([k, label]) => el("th", {class: k === "phase" ? "l" : "", title: k}, label)),
                  el("th", {}, "stored episodes"));
  const rows = metrics.map(m => {
    const sample = m.phase === "rl" || m.phase === undefined ? byIteration.get(m.iteration) : undefined;
    const cells = columns.map(([k]) => {
      const v = m[k];
      const text = /success|invalid|clip/.test(k) && isNum(v) ? pct(v) : fmt(v);
      return el("td", {class: (k === "phase" ? "l " : "") + (isBad(v) ? "nan" : "")}, text);
    });
    const episodes = sample ? sample.groups.reduce((n, g) => n + g.episodes.length, 0) : 0;
    cells.push(el("td", {}, sample ? `${episodes}` + (sample.failures.length ? ` · ${sample.failures.length} failed` : "")
                                   : ""));
    return el("tr", {class: sample ? "clickable" : "", "data-iteration": m.iteration,
                     onclick: sample ? () => openIteration(m.iteration) : null}, cells);
  });
  $("iterations").replaceChildren(el("table", {id: "iteration-table"}, el("thead", {}, head), el("tbody", {}, rows)));
  $("config").textContent = RUN.config ? JSON.stringify(RUN.config, null, 2) : "no checkpoint config found";
}

// ------------------------------------------------------------------------------------------- eval table

function drawEval() {
  const ks = [...new Set(EVAL.results.flatMap(r => Object.keys(r.pass_at_k || {})))].sort((a, b) => a - b);
  const head = el("tr", {}, el("th", {class: "l"}, "env"), el("th", {class: "l"}, "policy"), el("th", {}, "episodes"),
                  el("th", {class: "l"}, "success (95% CI)"), el("th", {}, "mean return"), el("th", {}, "mean turns"),
                  ks.map(k => el("th", {}, `pass@${k}`)), el("th", {}, "invalid"), el("th", {}, "cut off"),
                  el("th", {}, "tokens"), el("th", {}, "context-ended"), el("th", {}, "dropped episodes"),
                  el("th", {}, "failed attempts"));
  const rows = EVAL.results.map((r, i) => {
    const [lo, hi] = r.success_ci95;
    const bar = el("span", {class: "ci"}, el("i", {style: `left:${100 * lo}%;width:${100 * (hi - lo)}%`}),
                   el("b", {style: `left:calc(${100 * r.success_rate}% - 1px)`}));
    const sample = SAMPLES.findIndex(s => s.kind === "eval" && s.result === i);
    const failed = sample >= 0 ? SAMPLES[sample].failures.length : 0;
    return el("tr", {class: "clickable", "data-result": i, onclick: () => sample >= 0 && openSample(sample)},
              el("td", {class: "l"}, r.env_id), el("td", {class: "l"}, r.policy), el("td", {}, r.episodes),
              el("td", {class: "l"}, `${pct(r.success_rate)} (${pct(lo)}–${pct(hi)})`, bar),
              el("td", {}, fmt(r.mean_return)), el("td", {}, fmt(r.mean_turns, 1)),
              ks.map(k => el("td", {}, pct((r.pass_at_k || {})[k]))), el("td", {}, pct(r.invalid_action_rate)),
              el("td", {}, pct(r.cut_off_rate)), el("td", {}, r.generated_tokens ?? "-"),
              el("td", {}, r.context_ended ?? "-"), el("td", {}, r.dropped_episodes),
              el("td", {class: failed ? "bad" : ""}, failed));
  });
  $("eval").replaceChildren(el("table", {id: "eval-table"}, el("thead", {}, head), el("tbody", {}, rows)));
  $("eval-settings").textContent = JSON.stringify(EVAL.settings, null, 2);
}

// ------------------------------------------------------------------------------------------- samples and groups

function drawSamplePicker() {
  $("sample").replaceChildren(...SAMPLES.map((s, i) => el("option", {value: i}, s.label)));
  $("sample").addEventListener("change", () => openSample(Number($("sample").value)));
  $("prev-sample").addEventListener("click", () => state.sample > 0 && openSample(state.sample - 1));
  $("next-sample").addEventListener("click", () => state.sample < SAMPLES.length - 1 && openSample(state.sample + 1));
}

function openIteration(iteration) {
  const run = SAMPLES.map((s, i) => [s, i]).filter(([s]) => s.kind === "run");
  if (!run.length) return;
  const [, index] = run.reduce((best, cur) =>
    Math.abs(cur[0].iteration - iteration) < Math.abs(best[0].iteration - iteration) ? cur : best);
  openSample(index);
  $("sample-section").scrollIntoView({behavior: "smooth", block: "start"});
}

function groupStats(group) {
  const turns = group.episodes.flatMap(e => e.turns.map(turnOf));
  const adv = turns.map(t => t.advantage).filter(isNum);
  const returns = group.episodes.map(e => e.return).filter(isNum);
  return {turns: turns.length, invalid: turns.filter(t => t.invalid).length,
          advRange: adv.length ? [Math.min(...adv), Math.max(...adv)] : null,
          returnRange: returns.length ? [Math.min(...returns), Math.max(...returns)] : null};
}

function openSample(index) {
  state.sample = index;
  const sample = SAMPLES[index];
  $("sample").value = String(index);
  $("sample-section").hidden = false;
  const episodes = sample.groups.reduce((n, g) => n + g.episodes.length, 0);
  $("sample-note").textContent = sample.kind === "run"
    ? `${sample.groups.length} of ${sample.groups_collected} groups stored, ${episodes} episodes`
    : `${sample.groups.length} groups, ${episodes} episodes`;
  $("sample-hint").textContent = "click a group to see its episodes side by side";
  for (const row of document.querySelectorAll("#iteration-table tr, #eval-table tr")) {
    row.classList.toggle("selected", sample.kind === "run" ? Number(row.dataset.iteration) === sample.iteration
      && row.classList.contains("clickable") : Number(row.dataset.result) === sample.result);
  }
  const seeds = new Set(sample.groups.map(g => g.seed));
  $("failures").replaceChildren(...(sample.failures.length ? [el("div", {class: "failures"},
    el("b", {}, `${sample.failures.length} failed episode attempts in this rollout`),
    sample.failures.slice(0, 50).map(f => el("div", {},
      `group ${f.group}, episode ${f.member}, attempt ${f.attempt + 1}, seed ${f.seed}` +
      (seeds.has(f.seed) ? " (a stored group)" : "") + `: ${f.cause}`)),
    sample.failures.length > 50 ? el("div", {}, `… and ${sample.failures.length - 50} more`) : null)] : []));
  const hasAdv = sample.groups.some(g => g.episodes.some(e => e.turns.some(t => isNum(t[FIELD.advantage]))));
  const head = el("tr", {}, el("th", {}, "group"), el("th", {}, "task"), el("th", {}, "seed"), el("th", {}, "won"),
                  el("th", {}, "mean return"), el("th", {}, "return range"), el("th", {}, "turns"),
                  el("th", {}, "invalid turns"), el("th", {title: "share of turns whose state recurs in the group"},
                  "anchor hits"), hasAdv ? el("th", {}, "advantage range") : null, el("th", {}, "failed attempts"));
  const rows = sample.groups.map((g, i) => {
    const st = groupStats(g);
    const failed = sample.failures.filter(f => f.seed === g.seed).length;
    return el("tr", {class: "clickable group-row", "data-group": i, onclick: () => openGroup(i)},
              el("td", {}, i), el("td", {}, g.task), el("td", {}, g.seed), el("td", {}, `${g.wins}/${g.episodes.length}`),
              el("td", {}, fmt(g.mean_return)),
              el("td", {}, st.returnRange ? `${fmt(st.returnRange[0])} … ${fmt(st.returnRange[1])}` : "–"),
              el("td", {}, st.turns), el("td", {class: st.invalid ? "bad" : ""}, st.invalid),
              el("td", {}, pct(g.anchor_hit_rate)),
              hasAdv ? el("td", {}, st.advRange ? `${fmt(st.advRange[0])} … ${fmt(st.advRange[1])}` : "–") : null,
              el("td", {class: failed ? "bad" : ""}, failed));
  });
  $("groups").replaceChildren(sample.groups.length ? el("table", {id: "group-table"}, el("thead", {}, head),
                                                        el("tbody", {}, rows))
                                                   : el("div", {class: "empty"}, "no complete groups stored"));
  $("group-section").hidden = true;
  $("token-section").hidden = true;
  if (sample.groups.length) openGroup(0);
}

// A branch episode (rollout.branch) names its parent; a sampled one has parent null.
const isBranch = episode => episode.parent !== null && episode.parent !== undefined;

// Episodes in tree order: each root, then its branches (Episode.parent), depth first; depth 0 for a root.
function treeOrder(episodes) {
  const children = episodes.map(() => []);
  const roots = [];
  episodes.forEach((ep, e) => (isBranch(ep) ? children[ep.parent] : roots).push(e));
  const order = [];
  const visit = (e, depth) => { order.push({e, depth}); for (const c of children[e]) visit(c, depth + 1); };
  for (const r of roots) visit(r, 0);
  return order;
}

function openGroup(index) {
  state.group = index;
  const sample = SAMPLES[state.sample];
  const group = sample.groups[index];
  for (const row of document.querySelectorAll("#group-table tr.group-row")) {
    row.classList.toggle("selected", Number(row.dataset.group) === index);
  }
  $("group-section").hidden = false;
  $("token-section").hidden = true;
  const branches = group.episodes.filter(isBranch).length;
  $("group-title").textContent = `${sample.label} · group ${index} · ${group.env_id} · ${group.split} task ` +
    `${group.task} · seed ${group.seed} · ${group.wins}/${group.episodes.length} won` +
    (branches ? ` · ${group.episodes.length - branches} sampled episodes and ${branches} branches` : "");
  const turnsOf = group.episodes.map(e => e.turns.map(turnOf));
  const adv = turnsOf.flat().map(t => t.advantage).filter(isNum);
  const scale = adv.length ? Math.max(...adv.map(Math.abs)) : 0;
  // without advantages (an evaluation) the reward is shaded instead
  const rewardScale = scale ? 0 : Math.max(0, ...turnsOf.flat().map(t => t.reward).filter(isNum).map(Math.abs));
  const anchors = new Map();  // state string index -> colour number, in order of first appearance
  for (const t of turnsOf.flat()) if (t.anchor > 1 && !anchors.has(t.state)) anchors.set(t.state, anchors.size);
  $("group-legend").replaceChildren(...[
    scale ? el("span", {}, el("span", {class: "adv", style: `background:${advColour(scale, scale)}`}, "+adv"), " ",
               el("span", {class: "adv", style: `background:${advColour(-scale, scale)}`}, "−adv"),
               ` (shade ∝ |advantage|, max ${fmt(scale)})`) : null,
    el("span", {}, `${anchors.size} anchor states shared by more than one turn (coloured edge; hover a turn to see its ` +
                   "state across episodes)"),
    el("span", {class: "bad"}, "dashed red: invalid action")].filter(Boolean));
  const failures = sample.failures.filter(f => f.seed === group.seed);
  const columns = treeOrder(group.episodes).map(({e, depth}) => {
    const episode = group.episodes[e];
    const start = episode.branch_turn ?? 0;  // a branch's turns continue its parent's from the branch point
    const head = el("div", {class: "head"},
      el("b", {class: episode.won ? "won" : "lost"}, episode.won ? "won" : "not won"),
      ` · episode ${e} · return ${fmt(episode.return)} · ${episode.turns.length} turns · ${episode.end}`,
      isBranch(episode)
        ? el("div", {class: "branch-of"}, `↳ branch of episode ${episode.parent} at turn ${start} ` +
                                           `(turns t0–t${start - 1} are its parent's)`) : null);
    const cells = turnsOf[e].map((t, k) => {
      const colour = anchors.has(t.state) ? anchorColour(anchors.get(t.state)) : "#d5d9e0";
      const action = STR[t.action];
      return el("div", {class: "turn" + (t.invalid ? " invalid" : ""), style: `border-left-color:${colour}`,
                        "data-episode": e, "data-turn": k, "data-state": t.state,
                        title: `state ${STR[t.state]}`,
                        onmouseenter: () => highlightState(t.state, true),
                        onmouseleave: () => highlightState(t.state, false),
                        onclick: () => openTurn(e, k)},
        el("div", {}, el("span", {class: "muted"}, `t${start + k} `),
           el("span", {class: "act"}, action.length > 160 ? action.slice(0, 160) + "…" : (action || "(empty)"))),
        el("div", {class: "nums"},
           el("span", {class: rewardScale ? "adv" : "", style: `background:${advColour(t.reward, rewardScale)}`},
              "r ", el("b", {}, fmt(t.reward))),
           isNum(t.advantage) ? el("span", {class: "adv", style: `background:${advColour(t.advantage, scale)}`},
                                   "A ", fmt(t.advantage)) : null,
           isNum(t.intrinsic) ? el("span", {}, "int ", fmt(t.intrinsic)) : null),
        el("div", {},
           t.anchor > 1 ? el("span", {class: "badge anchor", style: `background:${colour}`,
                                      title: "turns of this group that act from this state"}, `anchor ×${t.anchor}`)
                        : null,
           t.invalid ? el("span", {class: "badge inv"}, "invalid") : null,
           t.finish !== "stop" ? el("span", {class: "badge fin"}, t.finish) : null),
        el("div", {class: "obs"}, STR[t.observation]));
    });
    const final = el("div", {class: "turn", style: "cursor:default"}, el("span", {class: "muted"}, "final observation"),
                     el("div", {class: "obs"}, STR[episode.final]));
    return el("div", {class: "episode" + (depth ? " branch" : ""), "data-episode": e,
                      style: depth ? `margin-top:${Math.min(depth, 4) * 1.5}em` : ""}, head, cells, final);
  });
  $("episodes").replaceChildren(
    ...(failures.length ? [el("div", {class: "failures", style: "flex:0 0 220px"}, el("b", {}, "failed attempts"),
        failures.map(f => el("div", {}, `episode ${f.member}, attempt ${f.attempt + 1}: ${f.cause}`)))] : []),
    ...columns);
}

function highlightState(stateIndex, on) {
  for (const cell of document.querySelectorAll(`#episodes .turn[data-state="${stateIndex}"]`)) {
    cell.classList.toggle("same-state", on);
  }
}

// ------------------------------------------------------------------------------------------- token view

function tokenText(id) {
  const text = VOCAB[String(id)];
  return text === undefined ? `#${id}` : text;
}

function openTurn(e, k) {
  state.episode = e; state.turn = k;
  const sample = SAMPLES[state.sample];
  const group = sample.groups[state.group];
  const t = turnOf(group.episodes[e].turns[k]);
  for (const cell of document.querySelectorAll("#episodes .turn.selected")) cell.classList.remove("selected");
  const cell = document.querySelector(`#episodes .turn[data-episode="${e}"][data-turn="${k}"]`);
  if (cell) cell.classList.add("selected");
  const obsIds = SEQ[t.obs_ids], actionIds = SEQ[t.action_ids];
  const ratios = t.new_logprobs ? t.new_logprobs.map((lp, i) => Math.exp(lp - t.logprobs[i])) : null;
  const logRatios = ratios ? ratios.map(Math.log) : [];
  const outside = r => r < 1 - CLIP[0] || r > 1 + CLIP[1];
  $("token-section").hidden = false;
  $("token-title").textContent = `Tokens · ${sample.label} · group ${state.group} · episode ${e} · turn ${k}`;
  const facts = [
    ["action", STR[t.action] || "(empty)"], ["reward", fmt(t.reward)], ["advantage", fmt(t.advantage)],
    ["intrinsic reward", fmt(t.intrinsic)], ["anchor size", `${t.anchor} turns of this group act from this state`],
    ["state key", STR[t.state]], ["invalid action", t.invalid ? "yes" : "no"], ["finish", t.finish],
    ["tokens", `${obsIds.length} prompt (masked, no loss) + ${actionIds.length} sampled (trained)`]];
  if (ratios && ratios.length) {
    const mean = ratios.reduce((a, b) => a + b, 0) / ratios.length;
    const worst = Math.max(...logRatios.map(Math.abs));
    facts.push(["ratio new / behaviour", `mean ${fmt(mean, 4)}, max |log ratio| ${fmt(worst, 4)}, ` +
                `${ratios.filter(outside).length} outside the clip range [${1 - CLIP[0]}, ${1 + CLIP[1]}]`]);
  }
  $("token-facts").replaceChildren(...facts.flatMap(([k2, v]) => [el("div", {}, k2), el("div", {}, v)]));
  if (!actionIds.length) {
    $("token-legend").replaceChildren();
    $("tokens").replaceChildren(el("div", {class: "empty"},
      "no tokens: this episode was played by a text policy (scripted, random or an endpoint)"));
    $("token-table").replaceChildren();
    return;
  }
  const scale = Math.abs(t.advantage) || 1;
  $("token-legend").replaceChildren(
    el("span", {}, el("span", {class: "tok masked"}, "prompt"), " masked: in the context, not trained"),
    el("span", {}, el("span", {class: "tok trained", style: `background:${advColour(t.advantage, scale)}`}, "sampled"),
       " trained, shaded by the turn's advantage"),
    el("span", {}, ratios ? "the number under a sampled token: exp(new − behaviour logprob); red outside the clip range"
                          : "the number under a sampled token: its behaviour logprob"));
  const limit = 600;
  const shown = obsIds.length > limit ? obsIds.slice(-limit) : obsIds;
  const prompt = shown.map(id => el("span", {class: "tok masked", title: `id ${id} · ${JSON.stringify(tokenText(id))}`},
                                    visible(tokenText(id))));
  const sampled = actionIds.map((id, i) => el("span", {class: "tok trained", "data-token": i,
      style: `background:${advColour(t.advantage, scale)}`,
      title: `id ${id} · ${JSON.stringify(tokenText(id))} · behaviour logprob ${fmt(t.logprobs[i], 4)}` +
             (ratios ? ` · new logprob ${fmt(t.new_logprobs[i], 4)}` : "")},
    visible(tokenText(id)),
    el("span", {class: "r" + (ratios && outside(ratios[i]) ? " clip" : "")},
       ratios ? fmt(ratios[i], 3) : fmt(t.logprobs[i], 2))));
  const more = obsIds.length > limit ? [el("button", {onclick: () => {
    $("tokens").prepend(...obsIds.slice(0, obsIds.length - limit).map(id => el("span", {class: "tok masked"},
                                                                             visible(tokenText(id)))));
    more[0].remove();
  }}, `show the first ${obsIds.length - limit} prompt tokens`)] : [];
  $("tokens").replaceChildren(...more, ...prompt, ...sampled);
  const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "id"), el("th", {class: "l"}, "token"),
                  el("th", {}, "behaviour logprob"), ratios ? el("th", {}, "new logprob") : null,
                  ratios ? el("th", {}, "ratio") : null, el("th", {}, "advantage"));
  const rows = actionIds.map((id, i) => el("tr", {},
    el("td", {}, i), el("td", {}, id), el("td", {class: "l"}, JSON.stringify(tokenText(id))),
    el("td", {}, fmt(t.logprobs[i], 4)), ratios ? el("td", {}, fmt(t.new_logprobs[i], 4)) : null,
    ratios ? el("td", {class: outside(ratios[i]) ? "bad" : ""}, fmt(ratios[i], 4)) : null,
    el("td", {}, fmt(t.advantage))));
  $("token-table").replaceChildren(el("table", {id: "token-rows"}, el("thead", {}, head), el("tbody", {}, rows)));
}

// ------------------------------------------------------------------------------------------- start

function main() {
  drawHeader();
  $("show-obs").addEventListener("change", () =>
    $("episodes").classList.toggle("hide-obs", !$("show-obs").checked));
  if (RUN) {
    $("curve-section").hidden = false;
    $("iterations-section").hidden = false;
    drawCurvePicker();
    drawIterations();
  }
  if (EVAL) {
    $("eval-section").hidden = false;
    drawEval();
  }
  if (SAMPLES.length) {
    drawSamplePicker();
    openSample(SAMPLES.findIndex(s => s.kind === "run") >= 0
      ? SAMPLES.map(s => s.kind).lastIndexOf("run") : 0);
  }
  document.body.dataset.ready = "1";
}

main();
