// sifirdan web chat: plain JavaScript, no build step, no dependencies, nothing from outside this server.
//
// Talks to the OpenAI-compatible API of `sifirdan serve`:
//   GET  /v1/models            -> the model name shown in the header (and sent with each request)
//   POST /v1/chat/completions  -> {messages, stream: true, temperature, max_tokens, top_p, no_repeat_ngram_size,
//                                 exponential_decay_length_penalty, prompt_boost}; the reply arrives as
//                                 server-sent events `data: {chunk}` ... `data: [DONE]` and is shown as it grows.
// Model output is only ever inserted as text (textContent), never parsed as HTML.
// The page is served with `Content-Security-Policy: default-src 'self'`: no inline scripts, styles or handlers.
"use strict";

(function () {
  // ------------------------------------------------------------------------------------------------ SSE
  // A server-sent-events parser fed with decoded text in arbitrary pieces: a piece may end in the middle of a
  // line (the rest comes with the next read). Lines end in \n, \r\n or \r; an event ends at a blank line; its
  // `data:` lines are joined with \n; comments (`: ping`) and other fields are ignored.
  class SSEParser {
    constructor(onData) {
      this.onData = onData;
      this.buffer = "";
      this.data = [];
      this.pendingCR = false;
    }

    feed(text) {
      if (this.pendingCR && text.startsWith("\n")) text = text.slice(1); // a \r\n split across two reads
      this.pendingCR = false;
      this.buffer += text;
      const re = /\r\n|\r|\n/g;
      let start = 0;
      let m;
      while ((m = re.exec(this.buffer)) !== null) {
        if (m[0] === "\r" && m.index === this.buffer.length - 1) {
          this.pendingCR = true; // may be the first half of \r\n
        }
        this.line(this.buffer.slice(start, m.index));
        start = re.lastIndex;
      }
      this.buffer = this.buffer.slice(start);
    }

    end() {
      if (this.buffer) this.line(this.buffer);
      this.buffer = "";
      this.line(""); // a last event without its blank line still counts
    }

    line(line) {
      if (line === "") {
        if (this.data.length) {
          const data = this.data.join("\n");
          this.data = [];
          this.onData(data);
        }
        return;
      }
      if (line.startsWith(":")) return; // comment / keep-alive
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
    }
  }

  // ------------------------------------------------------------------------------------------------ page
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model-name"),
    messages: $("messages"),
    empty: $("empty"),
    error: $("error"),
    form: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    regenerate: $("regenerate"),
    reset: $("reset"),
    status: $("status"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    system: $("system"),
    apiKey: $("api-key"),
  };

  // The conversation as the API sees it: {role: "user"|"assistant", content} alternating, user first. Each
  // entry's bubble is kept beside it so Regenerate and a failed turn can take it off the page again.
  let conversation = [];
  let modelId = null;
  let controller = null; // AbortController of the reply being streamed, null when idle
  let epoch = 0; // bumped by Reset: a reply still finishing after it must not touch the new conversation

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = el.apiKey.value.trim(); // kept in this input only: never stored, never put in a URL
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // Follow the reply as it grows unless the user has scrolled up to read something (a layout change, like
  // the status line appearing, fires no scroll event and so does not count as scrolling up).
  let stick = true;

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  let autoTop = 0; // where scrollDown last put the view

  function scrollDown() {
    el.messages.scrollTop = el.messages.scrollHeight;
    autoTop = el.messages.scrollTop;
  }

  function addBubble(role, text) {
    el.empty.hidden = true;
    const box = document.createElement("div");
    box.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? "Siz" : "Model";
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text; // text, never HTML
    box.append(who, body);
    el.messages.append(box);
    stick = true; // a new message: back to the bottom
    scrollDown();
    return box;
  }

  function addNote(box, text) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = text;
    box.append(note);
  }

  function refreshButtons() {
    const busy = controller !== null;
    document.body.dataset.state = busy ? "streaming" : "idle";
    el.send.disabled = busy;
    el.stop.disabled = !busy;
    const last = conversation[conversation.length - 1];
    el.regenerate.disabled = busy || !last || last.role !== "assistant";
  }

  // Error text from a failed response: OpenAI's envelope {"error": {"message": ...}} when the body has one.
  async function errorText(resp) {
    let body = "";
    try {
      body = await resp.text();
    } catch (e) {
      /* no body */
    }
    try {
      const j = JSON.parse(body);
      if (j && j.error) {
        if (typeof j.error === "string") return j.error;
        if (j.error.message) return String(j.error.message);
      }
      if (j && j.detail) return typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
    } catch (e) {
      /* not JSON */
    }
    const status = "HTTP " + resp.status + (resp.statusText ? " " + resp.statusText : "");
    return body ? status + ": " + body.slice(0, 300) : status;
  }

  async function loadModel() {
    try {
      const resp = await fetch("/v1/models", { headers: headers() });
      if (!resp.ok) {
        el.model.textContent = "—";
        showError("Model listesi alınamadı: " + (await errorText(resp)));
        return;
      }
      const j = await resp.json();
      const first = j && Array.isArray(j.data) && j.data[0];
      if (!first || typeof first.id !== "string") {
        el.model.textContent = "—";
        showError("Sunucu hiç model bildirmedi (/v1/models boş).");
        return;
      }
      modelId = first.id;
      el.model.textContent = modelId;
      el.model.title = modelId;
      clearError();
    } catch (e) {
      el.model.textContent = "—";
      showError("Sunucuya ulaşılamadı: " + e.message);
    }
  }

  function readSettings() {
    const t = Number(el.temperature.value);
    if (el.temperature.value.trim() === "" || !Number.isFinite(t) || t < 0 || t > 2) {
      throw new Error("Sıcaklık 0 ile 2 arasında bir sayı olmalı.");
    }
    const n = Number(el.maxTokens.value);
    if (!Number.isInteger(n) || n < 1) {
      throw new Error("En fazla belirteç 1 veya daha büyük bir tam sayı olmalı.");
    }
    // top_p, the n-gram ban, the length decay and the prompt boost are `sifirdan chat`'s defaults: without the
    // ban a small model's answers loop; without the decay a few run on to max_tokens; without the boost the
    // answers do not restate what was asked
    return { temperature: t, max_tokens: n, top_p: 0.9, no_repeat_ngram_size: 3,
             exponential_decay_length_penalty: [150, 1.02], prompt_boost: [4, 2] };
  }

  // Stream one assistant reply to the conversation as it stands (it ends with a user message).
  async function streamReply() {
    let settings;
    try {
      settings = readSettings();
    } catch (e) {
      failTurn(e.message);
      return;
    }
    clearError();
    const messages = conversation.map((m) => ({ role: m.role, content: m.content }));
    const system = el.system.value.trim();
    if (system) messages.unshift({ role: "system", content: system });
    const body = Object.assign({ messages: messages, stream: true }, settings);
    if (modelId) body.model = modelId;

    const box = addBubble("assistant", "");
    box.classList.add("streaming");
    const textEl = box.querySelector(".text");
    let text = "";
    let finish = null;
    let streamError = null;
    let done = false;
    const mine = new AbortController();
    const myEpoch = epoch;
    controller = mine;
    refreshButtons();
    setStatus("yazıyor…");

    const parser = new SSEParser((data) => {
      if (done) return;
      if (data === "[DONE]") {
        done = true;
        return;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (e) {
        return; // not a chunk we understand
      }
      if (chunk && chunk.error) {
        streamError = typeof chunk.error === "string" ? chunk.error : chunk.error.message || JSON.stringify(chunk.error);
        return;
      }
      const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
      if (!choice) return; // e.g. the usage chunk: choices is empty
      const piece = choice.delta && choice.delta.content;
      if (typeof piece === "string" && piece) {
        text += piece;
        textEl.textContent = text; // text, never HTML
        if (stick) scrollDown();
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });

    let aborted = false;
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(body),
        signal: mine.signal,
      });
      if (!resp.ok) throw new Error(await errorText(resp));
      if (!resp.body) throw new Error("Tarayıcı akışlı yanıtı okuyamıyor.");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder("utf-8"); // stream mode: a character split across reads waits for its rest
      for (;;) {
        const { value, done: eof } = await reader.read();
        if (eof) break;
        parser.feed(decoder.decode(value, { stream: true }));
        if (done) {
          reader.cancel().catch(() => {});
          break;
        }
      }
      if (!done) {
        parser.feed(decoder.decode());
        parser.end();
      }
    } catch (e) {
      if (e.name === "AbortError") aborted = true;
      else if (e instanceof TypeError) streamError = "Sunucuya ulaşılamadı: " + e.message; // fetch's network error
      else streamError = e.message || String(e);
    } finally {
      if (controller === mine) controller = null;
    }
    if (epoch !== myEpoch) return; // reset meanwhile: its bubble is gone already

    box.classList.remove("streaming");
    if (!text) {
      // nothing came back: take the turn off the page, give the user their text back to resend
      box.remove();
      if (aborted) failTurn(null, "durduruldu");
      else failTurn(streamError || "Model boş bir cevap verdi.");
      return;
    }
    conversation.push({ role: "assistant", content: text, box: box });
    if (aborted) addNote(box, "durduruldu");
    else if (finish === "length") addNote(box, "belirteç sınırına ulaşıldı");
    if (streamError) {
      addNote(box, "yarıda kesildi");
      showError(streamError);
    }
    if (!aborted && !streamError && !done && finish === null) addNote(box, "bağlantı erken kapandı");
    setStatus(aborted ? "durduruldu" : "");
    refreshButtons();
  }

  // A turn that produced no reply: remove its user message so the conversation keeps alternating, and put the
  // text back in the input (unless the user has typed something new meanwhile).
  function failTurn(message, status) {
    const last = conversation[conversation.length - 1];
    if (last && last.role === "user") {
      conversation.pop();
      last.box.remove();
      if (!el.input.value.trim()) el.input.value = last.content;
    }
    if (!conversation.length) el.empty.hidden = false;
    if (message) showError(message);
    setStatus(status || "");
    refreshButtons();
  }

  function send() {
    if (controller) return;
    const text = el.input.value;
    if (!text.trim()) {
      el.input.focus();
      return;
    }
    el.input.value = "";
    const box = addBubble("user", text);
    conversation.push({ role: "user", content: text, box: box });
    streamReply();
  }

  function regenerate() {
    if (controller) return;
    const last = conversation[conversation.length - 1];
    if (!last || last.role !== "assistant") return;
    conversation.pop();
    last.box.remove();
    streamReply();
  }

  function reset() {
    if (controller) controller.abort();
    controller = null;
    epoch += 1;
    for (const m of conversation) m.box.remove();
    conversation = [];
    // a reply still being streamed has its bubble on the page but not yet in the conversation
    for (const b of el.messages.querySelectorAll(".msg")) b.remove();
    el.empty.hidden = false;
    clearError();
    setStatus("");
    refreshButtons();
    el.input.focus();
  }

  el.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  el.input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    }
  });
  el.stop.addEventListener("click", () => {
    if (controller) controller.abort();
  });
  el.messages.addEventListener("scroll", () => {
    // scrolled up past where the page put it: the user is reading; back near the bottom: follow again
    stick = nearBottom() || el.messages.scrollTop >= autoTop - 2;
  });
  el.regenerate.addEventListener("click", regenerate);
  el.reset.addEventListener("click", reset);
  el.apiKey.addEventListener("change", loadModel); // a server with --api-key answers 401 until the key is set

  // for tests and the curious: the parser is pure and can be fed by hand
  window.sifirdanChat = { SSEParser: SSEParser };

  refreshButtons();
  loadModel();
})();
