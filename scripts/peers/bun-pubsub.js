// uWebSockets' native pub/sub, through Bun: every client subscribes to one
// topic and every message is published to it, as is. The strongest peer
// for raw fan-out; scripts/compare measures it in the same run as ours.
//
//   bun scripts/peers/bun-pubsub.js PORT            # as is
//   bun scripts/peers/bun-pubsub.js PORT deflate    # permessage-deflate, uWebSockets' shared compressor
const port = Number(process.argv[2] ?? 0);
const deflate = process.argv[3] === "deflate";
const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(request, server) {
    if (server.upgrade(request)) {
      return undefined;
    }
    return new Response("upgrade to a WebSocket\n", { status: 426 });
  },
  websocket: {
    open(ws) {
      ws.subscribe("all");
    },
    message(_ws, message) {
      server.publish("all", message, deflate);
    },
    perMessageDeflate: deflate ? { compress: "shared", decompress: true } : false,
    // A client that falls behind is buffered (up to 16 MiB), not dropped:
    // the same promise as ours, so losses compare.
    backpressureLimit: 16 * 1024 * 1024,
    closeOnBackpressureLimit: false,
  },
});
console.log(`bun pub/sub listening on ws://${server.hostname}:${server.port}/`);
