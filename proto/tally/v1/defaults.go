package tallyv1

// DefaultAdminSocket is where tally-server serves the Admin API to local
// admins (mode 0600) and where tallyctl looks for it, unless told otherwise.
const DefaultAdminSocket = "/run/tally/admin.sock"
