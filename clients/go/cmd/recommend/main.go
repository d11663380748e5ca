// Command recommend prints the top 10 items for a user:
//
//	recommend [host:port] [user id]
//
// Defaults: 127.0.0.1:50051 (`bash scripts/start.sh` serves there) and user 196.
// RECSERVE_TOKEN is sent as the bearer token when set.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"

	"recserve"
)

func main() {
	target, user := "127.0.0.1:50051", "196"
	if len(os.Args) > 1 {
		target = os.Args[1]
	}
	if len(os.Args) > 2 {
		user = os.Args[2]
	}
	if err := run(target, user); err != nil {
		fmt.Fprintf(os.Stderr, "recommend: %v\n", err)
		var failed *recserve.Error
		if errors.As(err, &failed) && failed.Code == codes.Unavailable {
			fmt.Fprintf(os.Stderr, "is a server running at %s? start one with: bash scripts/start.sh\n", target)
		}
		os.Exit(1)
	}
}

func run(target, user string) error {
	userID, err := strconv.ParseInt(user, 10, 64)
	if err != nil {
		return fmt.Errorf("user id %q is not an integer", user)
	}
	client, err := recserve.Dial(target, recserve.Options{Deadline: 5 * time.Second, Token: os.Getenv("RECSERVE_TOKEN")})
	if err != nil {
		return err
	}
	defer client.Close()
	answer, err := client.Recommend(context.Background(), recserve.RecommendRequest{UserID: userID, K: 10})
	if err != nil {
		return err
	}
	cold := ""
	if answer.ColdStartUser {
		cold = " (cold-start user)"
	}
	fmt.Printf("top 10 for user %d from %s v%d%s:\n", userID, answer.Model.GetName(), answer.Model.GetVersion(), cold)
	for rank, item := range answer.Items {
		fmt.Printf("%2d. %6d  %.3f  %s\n", rank+1, item.ItemId, item.Score, item.Title)
	}
	return nil
}
