// What both chat pages share: the connection's state in #status (which
// also enables the message box), a line added to #messages, and the wait
// before reconnecting, from half a second doubling to ten, with jitter.
"use strict";
const chatPage = (function () {
  const $ = (id) => document.getElementById(id);
  const MAX_ITEMS = 500, BACKOFF_MIN = 500, BACKOFF_MAX = 10000;
  let backoff = BACKOFF_MIN;

  function setStatus(kind, label) {
    $("status").dataset.state = kind;
    $("status").textContent = label;
    const open = kind === "open";
    $("messageInput").disabled = !open;
    $("sendButton").disabled = !open;
  }

  return {
    setStatus,
    connecting() { setStatus("connecting", "connecting…"); },
    opened() {
      backoff = BACKOFF_MIN;
      setStatus("open", "connected");
      $("messageInput").focus();
    },
    // The socket closed with `code`: says so, and returns how long to wait
    // before connecting again.
    closed(code) {
      const delay = Math.round(backoff * (0.5 + Math.random() / 2));
      backoff = Math.min(backoff * 2, BACKOFF_MAX);
      setStatus("closed", "disconnected (" + code + "), retrying in " + (delay / 1000).toFixed(1) + " s");
      return delay;
    },
    // Adds a line, keeping the latest MAX_ITEMS, and follows it if the list
    // was scrolled to its end.
    append(item) {
      const list = $("messages");
      const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      list.appendChild(item);
      while (list.children.length > MAX_ITEMS) list.removeChild(list.firstChild);
      if (atBottom) list.scrollTop = list.scrollHeight;
    },
  };
})();
