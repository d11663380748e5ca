// Calls a live recserve server: RECSERVE_TARGET=127.0.0.1:50051 bash build.sh test
// (tests/clients/test_go_client.py starts a server and runs this for pytest and CI).
package recserve_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"recserve"
	pb "recserve/recservepb"
)

const (
	beyond2To53 int64 = 9007199254740993 // 2^53 + 1: not exact as a float64
	unknownItem int64 = 424242
)

var target = os.Getenv("RECSERVE_TARGET")

func TestMain(m *testing.M) {
	if target == "" {
		fmt.Fprintln(os.Stderr, "RECSERVE_TARGET is not set: point it at a running server, e.g. "+
			"RECSERVE_TARGET=127.0.0.1:50051 bash build.sh test (bash scripts/start.sh serves there)")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

func dial(t *testing.T) *recserve.Client {
	t.Helper()
	client, err := recserve.Dial(target, recserve.Options{Deadline: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func recommendFive(t *testing.T, client *recserve.Client) *pb.RecommendResponse {
	t.Helper()
	answer, err := client.Recommend(context.Background(),
		recserve.RecommendRequest{UserID: 1, K: 5, RequestID: "go-test-1"})
	if err != nil {
		t.Fatal(err)
	}
	return answer
}

func assertDescending(t *testing.T, items []*pb.ScoredItem) {
	t.Helper()
	for i := 1; i < len(items); i++ {
		if items[i-1].Score < items[i].Score {
			t.Fatalf("scores not descending at %d: %v", i, items)
		}
	}
}

func assertCode(t *testing.T, err error, code codes.Code, method, message string) {
	t.Helper()
	var failed *recserve.Error
	if !errors.As(err, &failed) {
		t.Fatalf("not a *recserve.Error: %v", err)
	}
	if failed.Code != code || status.Code(err) != code {
		t.Fatalf("code %v (status.Code %v), want %v: %s", failed.Code, status.Code(err), code, failed.Details)
	}
	if failed.CodeName() != recserve.CodeName(code) || failed.Method != method {
		t.Fatalf("CodeName %q, Method %q", failed.CodeName(), failed.Method)
	}
	if !strings.Contains(failed.Details, message) {
		t.Fatalf("details %q do not contain %q", failed.Details, message)
	}
	want := method + " failed: " + recserve.CodeName(code) + ": "
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), message) {
		t.Fatalf("message %q, want %q...%q", err.Error(), want, message)
	}
}

func TestRecommendReturnsKItemsBestFirst(t *testing.T) {
	answer := recommendFive(t, dial(t))
	if len(answer.Items) != 5 {
		t.Fatalf("%d items, want 5", len(answer.Items))
	}
	assertDescending(t, answer.Items)
	if answer.Model.GetName() == "" || answer.Model.GetVersion() < 1 {
		t.Fatalf("model %v", answer.Model)
	}
	if answer.RequestId != "go-test-1" {
		t.Fatalf("request id %q", answer.RequestId)
	}
	seen := map[int64]bool{}
	for _, item := range answer.Items {
		seen[item.ItemId] = true
	}
	if len(seen) != 5 {
		t.Fatalf("duplicate items: %v", answer.Items)
	}
	if answer.RankedBy != nil {
		t.Fatalf("ranked_by %v, but no cascade was asked for", answer.RankedBy)
	}
}

func TestRankRanksASubsetAndReportsUnknownIDs(t *testing.T) {
	client := dial(t)
	recommended := recommendFive(t, client)
	var subset []int64
	for i := 3; i >= 0; i-- {
		subset = append(subset, recommended.Items[i].ItemId)
	}
	candidates := append(append([]int64{}, subset...), unknownItem, beyond2To53)
	answer, err := client.Rank(context.Background(), recserve.RankRequest{UserID: 1, CandidateItemIDs: candidates, K: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(answer.Items) != 3 {
		t.Fatalf("%d items, want 3", len(answer.Items))
	}
	for _, item := range answer.Items {
		found := false
		for _, id := range subset {
			found = found || id == item.ItemId
		}
		if !found {
			t.Fatalf("item %d is not a candidate", item.ItemId)
		}
	}
	assertDescending(t, answer.Items)
	// The id above 2^53 makes the round trip exactly.
	if want := []int64{unknownItem, beyond2To53}; !reflect.DeepEqual(answer.UnknownItemIds, want) {
		t.Fatalf("unknown ids %v, want %v", answer.UnknownItemIds, want)
	}
	if answer.ColdStartUser {
		t.Fatal("user 1 is known")
	}
	if !proto.Equal(answer.Model, recommended.Model) {
		t.Fatalf("model %v, recommend's %v", answer.Model, recommended.Model)
	}
}

func TestListModelsAndGetModelInfoDescribeTheServingModel(t *testing.T) {
	client := dial(t)
	recommended := recommendFive(t, client)
	listed, err := client.ListModels(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, info := range listed.Models {
		names[info.Model.GetName()] = true
	}
	if !names[recommended.Model.GetName()] || !names[listed.DefaultModel] {
		t.Fatalf("models %v, default %q, serving %q", names, listed.DefaultModel, recommended.Model.GetName())
	}
	info, err := client.GetModelInfo(context.Background(), recserve.ModelInfoRequest{Model: recommended.Model.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(info.Model, recommended.Model) || info.Family == "" || info.NumItems <= 0 {
		t.Fatalf("info %v", info)
	}
	if len(info.Features) == 0 {
		t.Fatal("no features")
	}
	for _, feature := range info.Features {
		if feature.Side != pb.Feature_USER && feature.Side != pb.Feature_ITEM {
			t.Fatalf("feature %q side %v", feature.Name, feature.Side)
		}
	}
	loaded := false
	for _, version := range info.LoadedVersions {
		loaded = loaded || version == recommended.Model.GetVersion()
	}
	if !loaded {
		t.Fatalf("loaded versions %v lack %d", info.LoadedVersions, recommended.Model.GetVersion())
	}
}

func TestEmptyCandidateListIsInvalidArgument(t *testing.T) {
	_, err := dial(t).Rank(context.Background(), recserve.RankRequest{UserID: 1})
	assertCode(t, err, codes.InvalidArgument, "Rank", "candidate_item_ids is empty")
}

func TestKAboveTheServersLimitIsInvalidArgument(t *testing.T) {
	client := dial(t)
	_, err := client.Recommend(context.Background(), recserve.RecommendRequest{UserID: 1, K: 5000})
	assertCode(t, err, codes.InvalidArgument, "Recommend", "k must be between")
	var ids []int64
	for _, item := range recommendFive(t, client).Items {
		ids = append(ids, item.ItemId)
	}
	_, err = client.Rank(context.Background(), recserve.RankRequest{UserID: 1, CandidateItemIDs: ids, K: 1000000})
	assertCode(t, err, codes.InvalidArgument, "Rank", "k must be between")
}

func TestUnknownModelIsNotFound(t *testing.T) {
	_, err := dial(t).Recommend(context.Background(), recserve.RecommendRequest{UserID: 1, Model: "nope"})
	assertCode(t, err, codes.NotFound, "Recommend", "")
}

func TestExamplePrintsTheTop10(t *testing.T) {
	example := os.Getenv("RECSERVE_EXAMPLE")
	if example == "" {
		t.Skip("RECSERVE_EXAMPLE (the built cmd/recommend) is not set; `bash build.sh test` sets it")
	}
	out, err := exec.Command(example, target, "1").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", example, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !strings.HasPrefix(lines[0], "top 10 for user 1 from ") || len(lines) != 11 {
		t.Fatalf("output:\n%s", out)
	}
}
