// Minimal tus server for the Freight benchmark (loopback only).
// Usage: node tus_server.mjs PORT UPLOAD_DIR
// Resolves @tus/* from bench/.node (installed by setup_peers.sh) via NODE_PATH-free
// absolute imports, so it works whatever the current directory is.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, ".node", "package.json"));
const { Server } = await import(require.resolve("@tus/server"));
const { FileStore } = await import(require.resolve("@tus/file-store"));

const port = Number(process.argv[2]);
const directory = process.argv[3];
if (!port || !directory) {
  console.error("usage: node tus_server.mjs PORT UPLOAD_DIR");
  process.exit(2);
}

const server = new Server({ path: "/files", datastore: new FileStore({ directory }) });
server.listen({ host: "127.0.0.1", port }, () => {
  // peers.py waits for this line before starting the client.
  console.log(`tus listening on 127.0.0.1:${port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
