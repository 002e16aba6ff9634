package registrar

import (
	"context"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/tallyid/tally/internal/logkey"
)

// LeaderElection names the Lease the replicas of the server compete for.
type LeaderElection struct {
	Namespace, Name string
	// Identity is this replica's name in the Lease (the pod name).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod default to 15 s, 10 s
	// and 2 s, the values of Kubernetes' own controllers.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// elect runs a term each time this replica wins the Lease, until ctx ends.
func (r *Registrar) elect(ctx context.Context) error {
	le := *r.cfg.LeaderElection
	if le.LeaseDuration == 0 {
		le.LeaseDuration, le.RenewDeadline, le.RetryPeriod = 15*time.Second, 10*time.Second, 2*time.Second
	}
	for ctx.Err() == nil {
		// The elector hands the term's context over; the term runs here,
		// so it never outlives elect. The elector cancels that context when
		// its Run returns (lease lost, or ctx done).
		terms := make(chan context.Context, 1)
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Namespace: le.Namespace, Name: le.Name},
				Client:     r.cfg.Kube.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: le.Identity},
			},
			LeaseDuration:   le.LeaseDuration,
			RenewDeadline:   le.RenewDeadline,
			RetryPeriod:     le.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            "tally-registrar",
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) { terms <- ctx },
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			return err
		}
		ectx, cancel := context.WithCancel(ctx)
		ranOut := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { elector.Run(ectx); close(ranOut) })
		select {
		case term := <-terms:
			r.log.Info("registrar leading", logkey.Lease, le.Namespace+"/"+le.Name)
			r.metrics.leader.Set(1)
			if err := r.lead(term); err != nil {
				r.log.Error("registrar stopped", logkey.Error, err)
			}
			r.metrics.leader.Set(0)
		case <-ranOut:
		}
		cancel() // a term that stopped on its own releases the Lease
		wg.Wait()
		if ctx.Err() == nil {
			r.log.Warn("registrar lost its lease; competing again", logkey.Lease, le.Namespace+"/"+le.Name)
		}
	}
	return nil
}
