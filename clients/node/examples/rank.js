// Orders candidate items for a user, best first:
//   node examples/rank.js [host:port] [user id] [item ids, e.g. 1,50,100] [model]
// Defaults: 127.0.0.1:50051, user 196, items 1,50,100,181,258 and the server's default model.
import { RecserveClient } from "../src/client.js";

const [target = "127.0.0.1:50051", userId = "196", items = "1,50,100,181,258", model] =
  process.argv.slice(2);
const client = new RecserveClient(target, { deadlineMs: 5000, token: process.env.RECSERVE_TOKEN });
try {
  const candidateItemIds = items.split(",").map((id) => id.trim());
  const answer = await client.rank({ userId, candidateItemIds, model });
  console.log(`${answer.items.length} items for user ${userId} ranked by ${answer.model.name} v${answer.model.version}:`);
  for (const [rank, item] of answer.items.entries()) {
    console.log(`${String(rank + 1).padStart(2)}. ${item.itemId.padStart(6)}  ${item.score.toFixed(3)}  ${item.title}`);
  }
  if (answer.unknownItemIds.length > 0) {
    console.log(`not in the model's catalog: ${answer.unknownItemIds.join(", ")}`);
  }
} catch (error) {
  console.error(`rank: ${error.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
