// What both chat pages share: the connection's state in #status (which
// also enables the message box), and a line added to #messages.
"use strict";
const chatPage = (function () {
  const $ = (id) => document.getElementById(id);
  const MAX_ITEMS = 500;

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
      setStatus("open", "connected");
      $("messageInput").focus();
    },
    // The socket closed with `code`; the next try is `delay` ms away, or
    // none comes when `delay` is null.
    closed(code, delay) {
      const retry = delay === null ? "" : ", retrying in " + (delay / 1000).toFixed(1) + " s";
      setStatus("closed", "disconnected (" + code + ")" + retry);
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
