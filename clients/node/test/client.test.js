// Calls a live recserve server: RECSERVE_TARGET=127.0.0.1:50051 npm test
// (tests/clients/test_node_client.py starts a server and runs this for pytest and CI).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { RecserveClient, RecserveError, grpc, loadRecserveProto } from "../src/client.js";

const target = process.env.RECSERVE_TARGET;
if (!target) {
  throw new Error(
    "RECSERVE_TARGET is not set: point it at a running server, e.g. " +
      "RECSERVE_TARGET=127.0.0.1:50051 npm test (bash scripts/start.sh serves there)",
  );
}

const INVALID_ARGUMENT = 3;
const BEYOND_2_53 = "9007199254740993"; // 2^53 + 1: not representable as a JS number
const UNKNOWN_ITEM = "424242";
const here = path.dirname(fileURLToPath(import.meta.url));

/** @param {number[]} scores */
function assertDescending(scores) {
  for (let i = 1; i < scores.length; i++) {
    assert.ok(scores[i - 1] >= scores[i], `scores not descending: ${scores.join(", ")}`);
  }
}

/**
 * @param {Promise<unknown>} promise
 * @param {RegExp} message
 */
async function assertInvalidArgument(promise, message) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof RecserveError, `not a RecserveError: ${error}`);
    assert.ok(error instanceof Error);
    assert.equal(error.code, INVALID_ARGUMENT, `code ${error.code}: ${error.details}`);
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.details, message);
    assert.match(error.message, message);
    return true;
  });
}

describe("recserve Node.js client", () => {
  /** @type {RecserveClient} */
  let client;
  /** @type {Awaited<ReturnType<RecserveClient["recommend"]>>} */
  let recommended;

  before(async () => {
    client = new RecserveClient(target, { deadlineMs: 10_000 });
    recommended = await client.recommend({ userId: 1, k: 5, requestId: "node-test-1" });
  });

  after(() => client?.close());

  test("Recommend returns k items, best first, from a named model version", () => {
    assert.equal(recommended.items.length, 5);
    assertDescending(recommended.items.map((item) => item.score));
    assert.ok(recommended.model.name, "model name is empty");
    assert.match(recommended.model.version, /^[1-9][0-9]*$/, "version is an int64 string");
    assert.equal(recommended.requestId, "node-test-1");
    for (const item of recommended.items) {
      assert.equal(typeof item.itemId, "string", "int64 ids are strings (longs: String)");
      assert.equal(typeof item.score, "number");
    }
    assert.equal(new Set(recommended.items.map((item) => item.itemId)).size, 5);
    assert.equal(recommended.rankedBy, null, "no cascade was asked for");
  });

  test("Rank ranks a subset of those items and reports unknown ids", async () => {
    const subset = recommended.items
      .slice(0, 4)
      .map((item) => item.itemId)
      .reverse();
    const answer = await client.rank({
      userId: 1,
      candidateItemIds: [...subset, UNKNOWN_ITEM, BEYOND_2_53],
      k: 3,
    });
    assert.equal(answer.items.length, 3);
    for (const item of answer.items) assert.ok(subset.includes(item.itemId), item.itemId);
    assertDescending(answer.items.map((item) => item.score));
    // The id above 2^53 makes the round trip exactly, as a string.
    assert.deepEqual(answer.unknownItemIds, [UNKNOWN_ITEM, BEYOND_2_53]);
    assert.equal(answer.coldStartUser, false);
    assert.deepEqual(answer.model, recommended.model);
  });

  test("Rank takes numbers and bigints as ids too", async () => {
    const ids = recommended.items.slice(0, 2).map((item) => item.itemId);
    const answer = await client.rank({
      userId: 1n,
      candidateItemIds: [Number(ids[0]), BigInt(ids[1])],
    });
    assert.deepEqual(answer.items.map((item) => item.itemId).sort(), [...ids].sort());
  });

  test("ListModels and GetModelInfo describe the serving model", async () => {
    const listed = await client.listModels();
    const names = listed.models.map((info) => info.model.name);
    assert.ok(names.includes(recommended.model.name), names.join(", "));
    assert.ok(names.includes(listed.defaultModel), listed.defaultModel);
    const info = await client.getModelInfo({ model: recommended.model.name });
    assert.deepEqual(info.model, recommended.model);
    assert.ok(info.family, "family is empty");
    assert.ok(info.features.length > 0, "no features");
    for (const feature of info.features) assert.ok(["USER", "ITEM"].includes(feature.side));
    assert.ok(info.loadedVersions.includes(recommended.model.version));
    assert.ok(Number(info.numItems) > 0);
  });

  test("an empty candidate list is INVALID_ARGUMENT", async () => {
    await assertInvalidArgument(
      client.rank({ userId: 1, candidateItemIds: [] }),
      /candidate_item_ids is empty/,
    );
  });

  test("k above the server's limit is INVALID_ARGUMENT", async () => {
    await assertInvalidArgument(client.recommend({ userId: 1, k: 5000 }), /k must be between/);
    const ids = recommended.items.map((item) => item.itemId);
    await assertInvalidArgument(
      client.rank({ userId: 1, candidateItemIds: ids, k: 1_000_000 }),
      /k must be between/,
    );
  });

  test("an unknown model is NOT_FOUND", async () => {
    await assert.rejects(client.recommend({ userId: 1, model: "nope" }), {
      name: "RecserveError",
      code: grpc.status.NOT_FOUND,
    });
  });

  test("the example prints the top 10", async () => {
    const example = path.join(here, "..", "examples", "recommend.js");
    const { stdout } = await promisify(execFile)(process.execPath, [example, target, "1"], {
      timeout: 30_000,
    });
    const lines = stdout.trim().split("\n");
    assert.match(lines[0], /^top 10 for user 1 from /);
    assert.equal(lines.length, 11, stdout);
  });
});

test("RECSERVE_PROTO names the .proto to load", (t) => {
  const saved = process.env.RECSERVE_PROTO;
  t.after(() => {
    if (saved === undefined) delete process.env.RECSERVE_PROTO;
    else process.env.RECSERVE_PROTO = saved;
  });
  process.env.RECSERVE_PROTO = path.join(here, "..", "..", "..", "proto", "recserve", "v1", "recserve.proto");
  assert.equal(typeof loadRecserveProto().Recommender, "function");
  process.env.RECSERVE_PROTO = "/nonexistent/recserve.proto";
  assert.throws(() => loadRecserveProto(), /not found at \/nonexistent\/recserve.proto; set RECSERVE_PROTO/);
});
