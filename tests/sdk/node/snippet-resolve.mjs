// Lets the documentation snippets in ../snippets/ run unchanged:
//   node --import ./snippet-resolve.mjs ../snippets/streaming_errors.mjs
// They have no node_modules of their own, so their `import ... from "openai"`
// is resolved as if it were written in this directory, whose node_modules
// holds the pinned SDK.
import { register } from "node:module";
import { isMainThread } from "node:worker_threads";

// This file is both the --import entry point (main thread) and the hooks
// module it registers (loaded by Node on its hooks thread).
if (isMainThread) {
  register(import.meta.url);
}

export async function resolve(specifier, context, nextResolve) {
  if (specifier === "openai" || specifier.startsWith("openai/")) {
    return nextResolve(specifier, { ...context, parentURL: import.meta.url });
  }
  return nextResolve(specifier, context);
}
