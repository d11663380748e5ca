// Prints the top 10 items for a user:
//   node examples/recommend.js [host:port] [user id]
// Defaults: 127.0.0.1:50051 (`bash scripts/start.sh` serves there) and user 196.
import { RecserveClient } from "../src/client.js";

const [target = "127.0.0.1:50051", userId = "196"] = process.argv.slice(2);
const client = new RecserveClient(target, { deadlineMs: 5000, token: process.env.RECSERVE_TOKEN });
try {
  const answer = await client.recommend({ userId, k: 10 });
  const cold = answer.coldStartUser ? " (cold-start user)" : "";
  console.log(`top 10 for user ${userId} from ${answer.model.name} v${answer.model.version}${cold}:`);
  for (const [rank, item] of answer.items.entries()) {
    console.log(`${String(rank + 1).padStart(2)}. ${item.itemId.padStart(6)}  ${item.score.toFixed(3)}  ${item.title}`);
  }
} catch (error) {
  console.error(`recommend: ${error.message}`);
  if (error.codeName === "UNAVAILABLE") {
    console.error(`is a server running at ${target}? start one with: bash scripts/start.sh`);
  }
  process.exitCode = 1;
} finally {
  client.close();
}
