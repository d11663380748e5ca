// A small Node.js client for the recserve Recommender service.
//
// The wire contract is proto/recserve/v1/recserve.proto; it is loaded at run time
// (never copied or generated), so this client always speaks the contract of the
// checkout it lives in. Set RECSERVE_PROTO to load another copy of the file.
//
// Field names are camelCase (proto-loader's default): user_id -> userId.
//
// int64 fields (ids, versions, counts) come back as decimal strings
// (`longs: String`): JavaScript numbers are exact only up to 2^53 - 1, and the
// contract allows any int64 id. Requests accept a number, a decimal string or a
// bigint for every int64 field, so ids above 2^53 can be sent as strings or bigints.
// Use Number(x) on an answer's id when you know your ids are small.

import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));

/** Where the contract lives inside a checkout (relative to its include root). */
const PROTO_RELATIVE = path.join("recserve", "v1", "recserve.proto");

/** The .proto of this checkout: <repo>/proto/recserve/v1/recserve.proto. */
export const DEFAULT_PROTO_PATH = path.resolve(here, "..", "..", "..", "proto", PROTO_RELATIVE);

/** Options handed to @grpc/proto-loader; see the module comment for `longs`. */
export const PROTO_LOADER_OPTIONS = Object.freeze({
  keepCase: false, // camelCase field names
  longs: String, // int64 -> decimal string, exact for every int64
  enums: String, // enum values by name, e.g. "USER"
  defaults: true, // unset fields read as their zero value ([] , 0, "", false)
  oneofs: true,
});

/** gRPC status code names by number (grpc.status mapped the other way). */
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

/**
 * A failed call: the gRPC status of the server's answer (or of the transport).
 * `code` is the numeric gRPC status (3 = INVALID_ARGUMENT, 5 = NOT_FOUND, ...; compare
 * with `grpc.status.INVALID_ARGUMENT`), `details` the server's message.
 */
export class RecserveError extends Error {
  /**
   * @param {import("@grpc/grpc-js").ServiceError} cause
   * @param {string} method
   */
  constructor(cause, method) {
    const codeName = CODE_NAMES[cause.code] ?? `code ${cause.code}`;
    super(`${method} failed: ${codeName}: ${cause.details}`, { cause });
    this.name = "RecserveError";
    /** @type {number} numeric gRPC status code */
    this.code = cause.code;
    /** @type {string} e.g. "INVALID_ARGUMENT" */
    this.codeName = codeName;
    /** @type {string} the server's message */
    this.details = cause.details;
    /** @type {import("@grpc/grpc-js").Metadata | undefined} trailing metadata */
    this.metadata = cause.metadata;
    /** @type {string} the RPC, e.g. "Rank" */
    this.method = method;
  }
}

/**
 * Finds the include root of a recserve.proto path: the folder holding
 * recserve/v1/recserve.proto, so that the file resolves as its package path.
 * @param {string} protoPath
 */
function includeRootOf(protoPath) {
  const absolute = path.resolve(protoPath);
  if (absolute.endsWith(path.sep + PROTO_RELATIVE)) {
    return absolute.slice(0, absolute.length - PROTO_RELATIVE.length - 1);
  }
  return path.dirname(absolute);
}

const loaded = new Map();

/**
 * Loads the contract and returns the `recserve.v1` package (cached per path).
 * @param {string} [protoPath] default: $RECSERVE_PROTO, else this checkout's .proto
 * @returns {any} the grpc package object: `.Recommender` is the client constructor
 */
export function loadRecserveProto(protoPath = process.env.RECSERVE_PROTO || DEFAULT_PROTO_PATH) {
  const absolute = path.resolve(protoPath);
  if (!loaded.has(absolute)) {
    if (!existsSync(absolute)) {
      throw new Error(
        `recserve.proto not found at ${absolute}; set RECSERVE_PROTO to the path of ` +
          `proto/recserve/v1/recserve.proto`,
      );
    }
    const root = includeRootOf(absolute);
    const definition = protoLoader.loadSync(path.relative(root, absolute), {
      ...PROTO_LOADER_OPTIONS,
      includeDirs: [root],
    });
    loaded.set(absolute, grpc.loadPackageDefinition(definition).recserve.v1);
  }
  return loaded.get(absolute);
}

/** @typedef {number | string | bigint} Int64 a number, a decimal string or a bigint */

/**
 * @typedef {object} ScoredItem
 * @property {string} itemId int64 as a decimal string
 * @property {number} score higher is better
 * @property {string} title empty when the model has no titles
 * @property {{baseline: number, fields: {feature: string, contribution: number}[]} | null} explanation
 *   set only when the request asked for `explain`
 */

/** @typedef {{name: string, version: string}} ModelRef version is an int64 string */

/**
 * @typedef {object} RankResponse
 * @property {ScoredItem[]} items best first
 * @property {string[]} unknownItemIds candidates the model does not know, in request order
 * @property {boolean} coldStartUser
 * @property {ModelRef} model
 * @property {string} requestId
 */

/**
 * @typedef {object} RecommendResponse
 * @property {ScoredItem[]} items best first
 * @property {boolean} coldStartUser
 * @property {string[]} unknownItemIds ids of recentItemIds the model does not know
 * @property {ModelRef} model
 * @property {ModelRef | null} rankedBy the ranker of a cascade, else null
 * @property {string} requestId
 */

/**
 * @typedef {object} ModelInfo see message ModelInfo in the .proto
 * @property {ModelRef} model
 * @property {string} family
 * @property {string} programFormat
 * @property {{name: string, side: string, cardinality: string, multiValued: boolean,
 *   vocabulary: string[], boundaries: number[]}[]} features
 * @property {Record<string, number>} metrics
 * @property {string} numUsers
 * @property {string} numItems
 * @property {string[]} loadedVersions
 * @property {string} createdAt
 */

/**
 * @typedef {object} ClientOptions
 * @property {number} [deadlineMs=10000] per-call deadline in milliseconds (0: none)
 * @property {string} [token] bearer token, sent as `authorization: Bearer <token>`
 * @property {import("@grpc/grpc-js").ChannelCredentials} [credentials] default: insecure
 *   (plain text); e.g. grpc.credentials.createSsl(rootCert) for TLS
 * @property {Record<string, any>} [channelOptions] grpc-js channel options, e.g.
 *   {"grpc.max_receive_message_length": 16 * 1024 * 1024}
 * @property {string} [protoPath] default: $RECSERVE_PROTO, else this checkout's .proto
 */

/** @param {Int64 | undefined | null} value */
function int64(value) {
  if (value === undefined || value === null) return "0";
  return typeof value === "bigint" ? value.toString() : value;
}

/**
 * @param {string | undefined} name
 * @param {Int64 | undefined} version
 */
function modelSpec(name, version) {
  return { name: name ?? "", version: int64(version) };
}

/** Calls the recserve Recommender service; every method returns a promise. */
export class RecserveClient {
  /**
   * @param {string} target host:port, e.g. "127.0.0.1:50051"
   * @param {ClientOptions} [options]
   */
  constructor(target, options = {}) {
    const {
      deadlineMs = 10_000,
      token,
      credentials = grpc.credentials.createInsecure(),
      channelOptions = {},
      protoPath,
    } = options;
    const pkg = loadRecserveProto(protoPath);
    this.target = target;
    this.deadlineMs = deadlineMs;
    this.token = token;
    /** @private */
    this.stub = new pkg.Recommender(target, credentials, channelOptions);
  }

  /**
   * @private
   * @param {string} method
   * @param {object} request
   */
  call(method, request) {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    const callOptions = this.deadlineMs > 0 ? { deadline: Date.now() + this.deadlineMs } : {};
    return new Promise((resolve, reject) => {
      this.stub[method](request, metadata, callOptions, (error, response) => {
        if (error) reject(new RecserveError(error, method));
        else resolve(response);
      });
    });
  }

  /**
   * Scores the candidates for one user; returns the best k, best first.
   * @param {object} request
   * @param {Int64} request.userId
   * @param {Int64[]} request.candidateItemIds required, no duplicates
   * @param {number} [request.k=0] 0: all known candidates
   * @param {Record<string, string>} [request.userFeatures] e.g. {age: "25"}
   * @param {string} [request.model] default: the server's default model
   * @param {Int64} [request.version] default (0): the newest loaded version
   * @param {boolean} [request.explain=false]
   * @param {string} [request.requestId]
   * @returns {Promise<RankResponse>}
   */
  rank({
    userId,
    candidateItemIds = [],
    k = 0,
    userFeatures = {},
    model,
    version,
    explain = false,
    requestId = "",
  }) {
    return this.call("Rank", {
      model: modelSpec(model, version),
      userId: int64(userId),
      userFeatures,
      candidateItemIds: candidateItemIds.map(int64),
      k,
      explain,
      requestId,
    });
  }

  /**
   * Returns the best k items of the catalog for one user.
   * @param {object} request
   * @param {Int64} request.userId
   * @param {number} [request.k=0] 0: 10
   * @param {Int64[]} [request.recentItemIds] newest last
   * @param {boolean} [request.includeSeen=false]
   * @param {Record<string, string>} [request.userFeatures]
   * @param {string} [request.model]
   * @param {Int64} [request.version]
   * @param {string | {name: string, version?: Int64}} [request.rankWith] a ranker that
   *   re-ranks what `model` retrieves (cascade)
   * @param {number} [request.retrieveN=0] cascade only
   * @param {string} [request.requestId]
   * @returns {Promise<RecommendResponse>}
   */
  recommend({
    userId,
    k = 0,
    recentItemIds = [],
    includeSeen = false,
    userFeatures = {},
    model,
    version,
    rankWith,
    retrieveN = 0,
    requestId = "",
  }) {
    const ranker = typeof rankWith === "string" ? { name: rankWith } : rankWith;
    return this.call("Recommend", {
      model: modelSpec(model, version),
      userId: int64(userId),
      userFeatures,
      recentItemIds: recentItemIds.map(int64),
      k,
      includeSeen,
      rankWith: ranker ? modelSpec(ranker.name, ranker.version) : undefined,
      retrieveN,
      requestId,
    });
  }

  /**
   * Describes one loaded model.
   * @param {{model?: string, version?: Int64}} [request] default: the default model
   * @returns {Promise<ModelInfo>}
   */
  getModelInfo({ model, version } = {}) {
    return this.call("GetModelInfo", { model: modelSpec(model, version) });
  }

  /**
   * Lists every loaded model (newest version of each), sorted by name.
   * `defaultRankWith` names the ranker of the default Recommend's cascade ("" if none).
   * @returns {Promise<{models: ModelInfo[], defaultModel: string, defaultRankWith: string}>}
   */
  listModels() {
    return this.call("ListModels", {});
  }

  /** Closes the channel; calls made afterwards fail. */
  close() {
    this.stub.close();
  }
}

export { grpc };
