// Package recserve is a small Go client for the recserve Recommender service.
//
// The wire contract is proto/recserve/v1/recserve.proto. The stubs it calls
// (package recserve/recservepb) are generated from that file by build.sh, never
// committed, so the client always speaks the contract of the checkout it lives in.
//
// Requests are plain structs whose fields are the .proto's (Go-cased); every field
// and its default is documented in the .proto, and a zero value means "default".
// Answers are the generated messages (recservepb.RankResponse, ...): int64 ids are
// int64, so ids above 2^53 round-trip exactly.
//
// A failed call returns an *Error carrying the gRPC status code.
package recserve

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "recserve/recservepb"
)

// DefaultDeadline is the deadline of each call when Options.Deadline is zero.
const DefaultDeadline = 10 * time.Second

// NoDeadline as Options.Deadline: calls have no deadline of their own (the
// caller's context may still set one).
const NoDeadline time.Duration = -1

// Options configure a Client; the zero value is plain text, a 10 s deadline, no token.
type Options struct {
	// Deadline of each call. Zero: DefaultDeadline; NoDeadline: none. A context
	// with an earlier deadline wins.
	Deadline time.Duration
	// Token, when set, is sent as `authorization: Bearer <token>` metadata
	// (a server started with token authentication needs it).
	Token string
	// Credentials for TLS, e.g. credentials.NewClientTLSFromFile("ca.pem", "").
	// Default (nil): plain text.
	Credentials credentials.TransportCredentials
	// DialOptions are appended to the client's own, e.g.
	// grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)).
	DialOptions []grpc.DialOption
}

// Client calls the Recommender service over one gRPC channel. It is safe for
// concurrent use; Close it when done.
type Client struct {
	conn     *grpc.ClientConn
	stub     pb.RecommenderClient
	deadline time.Duration
	token    string
}

// Dial returns a client for target ("host:port", e.g. "127.0.0.1:50051"). It does
// not wait for the server: a server that is not there fails the first call with
// UNAVAILABLE.
func Dial(target string, options Options) (*Client, error) {
	dialOptions := []grpc.DialOption{grpc.WithInsecure()}
	if options.Credentials != nil {
		dialOptions = []grpc.DialOption{grpc.WithTransportCredentials(options.Credentials)}
	}
	dialOptions = append(dialOptions, options.DialOptions...)
	conn, err := grpc.Dial(target, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("recserve: dial %s: %w", target, err)
	}
	deadline := options.Deadline
	if deadline == 0 {
		deadline = DefaultDeadline
	}
	return &Client{conn: conn, stub: pb.NewRecommenderClient(conn), deadline: deadline, token: options.Token}, nil
}

// Close closes the channel; calls made afterwards fail.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client on the same channel, for the RPCs this package
// does not wrap (RankStream, ReloadModels). Its calls get no deadline or token
// from Options.
func (c *Client) Stub() pb.RecommenderClient { return c.stub }

// RankRequest asks Rank to score candidates for one user (message RankRequest).
type RankRequest struct {
	UserID           int64
	CandidateItemIDs []int64 // required, no duplicates
	K                int32   // 0: all known candidates
	UserFeatures     map[string]string
	Model            string // "": the server's default model
	Version          int64  // 0: the newest loaded version
	Explain          bool
	RequestID        string
}

// RecommendRequest asks Recommend for the best items of the catalog (message
// RecommendRequest).
type RecommendRequest struct {
	UserID        int64
	K             int32   // 0: 10
	RecentItemIDs []int64 // newest last
	IncludeSeen   bool
	UserFeatures  map[string]string
	Model         string
	Version       int64
	// RankWith names a ranker that re-ranks what Model retrieves (a cascade);
	// "": no re-ranking.
	RankWith        string
	RankWithVersion int64
	RetrieveN       int32 // cascade only
	RequestID       string
}

// ModelInfoRequest names the model GetModelInfo describes; the zero value is the
// server's default model, newest version.
type ModelInfoRequest struct {
	Model      string
	Version    int64
	IncludeIDs bool // list the model's user and item ids too
}

// Rank scores the candidates for one user and returns the best K, best first.
func (c *Client) Rank(ctx context.Context, r RankRequest, opts ...grpc.CallOption) (*pb.RankResponse, error) {
	request := &pb.RankRequest{
		Model:            spec(r.Model, r.Version),
		UserId:           r.UserID,
		UserFeatures:     r.UserFeatures,
		CandidateItemIds: r.CandidateItemIDs,
		K:                r.K,
		Explain:          r.Explain,
		RequestId:        r.RequestID,
	}
	var answer *pb.RankResponse
	err := c.call(ctx, "Rank", opts, func(ctx context.Context, opts []grpc.CallOption) (err error) {
		answer, err = c.stub.Rank(ctx, request, opts...)
		return err
	})
	return answer, err
}

// Recommend returns the best K items of the catalog for one user.
func (c *Client) Recommend(ctx context.Context, r RecommendRequest, opts ...grpc.CallOption) (*pb.RecommendResponse, error) {
	request := &pb.RecommendRequest{
		Model:         spec(r.Model, r.Version),
		UserId:        r.UserID,
		UserFeatures:  r.UserFeatures,
		RecentItemIds: r.RecentItemIDs,
		K:             r.K,
		IncludeSeen:   r.IncludeSeen,
		RetrieveN:     r.RetrieveN,
		RequestId:     r.RequestID,
	}
	if r.RankWith != "" || r.RankWithVersion != 0 {
		request.RankWith = spec(r.RankWith, r.RankWithVersion)
	}
	var answer *pb.RecommendResponse
	err := c.call(ctx, "Recommend", opts, func(ctx context.Context, opts []grpc.CallOption) (err error) {
		answer, err = c.stub.Recommend(ctx, request, opts...)
		return err
	})
	return answer, err
}

// GetModelInfo describes one loaded model: family, features, training metrics.
func (c *Client) GetModelInfo(ctx context.Context, r ModelInfoRequest, opts ...grpc.CallOption) (*pb.ModelInfo, error) {
	request := &pb.GetModelInfoRequest{Model: spec(r.Model, r.Version), IncludeIds: r.IncludeIDs}
	var answer *pb.ModelInfo
	err := c.call(ctx, "GetModelInfo", opts, func(ctx context.Context, opts []grpc.CallOption) (err error) {
		answer, err = c.stub.GetModelInfo(ctx, request, opts...)
		return err
	})
	return answer, err
}

// ListModels lists every loaded model (newest version of each), sorted by name.
func (c *Client) ListModels(ctx context.Context, opts ...grpc.CallOption) (*pb.ListModelsResponse, error) {
	var answer *pb.ListModelsResponse
	err := c.call(ctx, "ListModels", opts, func(ctx context.Context, opts []grpc.CallOption) (err error) {
		answer, err = c.stub.ListModels(ctx, &pb.ListModelsRequest{}, opts...)
		return err
	})
	return answer, err
}

func spec(name string, version int64) *pb.ModelSpec {
	return &pb.ModelSpec{Name: name, Version: version}
}

// call runs one unary RPC with the client's deadline and token, and turns a
// failure into an *Error that carries the trailing metadata.
func (c *Client) call(ctx context.Context, method string, opts []grpc.CallOption,
	invoke func(context.Context, []grpc.CallOption) error) error {
	if c.deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.deadline)
		defer cancel()
	}
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	var trailer metadata.MD
	opts = append(opts[:len(opts):len(opts)], grpc.Trailer(&trailer))
	if err := invoke(ctx, opts); err != nil {
		return newError(method, err, trailer)
	}
	return nil
}

// Error is a failed call: the gRPC status of the server's answer (or of the
// transport). status.Code(err) and status.FromError(err) work on it too.
type Error struct {
	// Code is the gRPC status code, e.g. codes.InvalidArgument (3).
	Code codes.Code
	// Details is the server's message, e.g. "candidate_item_ids is empty; ...".
	Details string
	// Method is the RPC, e.g. "Rank".
	Method string
	// Trailer is the trailing metadata of the failed call.
	Trailer metadata.MD
	status  *status.Status
	cause   error
}

func newError(method string, err error, trailer metadata.MD) *Error {
	s := status.Convert(err)
	return &Error{Code: s.Code(), Details: s.Message(), Method: method, Trailer: trailer, status: s, cause: err}
}

// CodeName is the code's canonical name, e.g. "INVALID_ARGUMENT".
func (e *Error) CodeName() string { return CodeName(e.Code) }

// Error is "<method> failed: <code name>: <details>".
func (e *Error) Error() string {
	return fmt.Sprintf("%s failed: %s: %s", e.Method, e.CodeName(), e.Details)
}

// Unwrap returns the error grpc returned.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus makes status.FromError and status.Code see the call's status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

// CodeName is the canonical name of a gRPC status code ("INVALID_ARGUMENT"; grpc's
// own codes.Code.String() says "InvalidArgument").
func CodeName(code codes.Code) string {
	if name, ok := codeNames[code]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", uint32(code))
}
