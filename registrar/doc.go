// Package registrar keeps registration entries equal to what the
// tally.dev/v1alpha1 resources render for the pods that exist: one entry per
// pod and ClusterIdentity that selects it, one per ClusterStaticEntry.
//
// It runs inside tally-server and is event-driven and per pod: informers
// (pods, nodes, namespaces and the three resources) feed a work queue of pod
// UIDs and static-entry names; reconciling a key renders what it should
// have, compares it with the entries the registrar holds for it in memory,
// and makes at most one write (store.EntryWrites, all or none). It never
// lists entries per change: what it owns is read once when it starts, from
// the registry's memory.
//
// Every entry it writes carries a store.Owner with the cluster name, so
// several clusters can share one server; it changes and deletes only
// entries it owns, and hand edits of those need force.
//
// Several replicas elect a leader through a coordination.k8s.io Lease; only
// the leader writes.
package registrar
